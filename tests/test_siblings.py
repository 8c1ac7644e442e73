"""Sibling caches on loopback: several in-process nodes with static peers, the
fault-injecting upstream counting requests, and a misbehaving fake sibling.
(mDNS between network namespaces is in test_siblings_lan.py.)"""
from __future__ import annotations

import asyncio
import os
import time
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp
import pytest

from edgecache.config import ConfigError, build
from edgecache.errors import SiblingError
from edgecache.reference import parse_digest
from edgecache.siblings import hopauth
from edgecache.siblings.peers import PeerTable, rendezvous
from edgecache.store import layout
from tests.support.eventually import eventually
from tests.support.edge import EdgeServer, make_config
from tests.support.fakesibling import FakeSibling
from tests.support.faulty import FaultyUpstream
from tests.support.images import make_image

MiB = 1024 * 1024
SECRET = b"branch-secret-0123456789abcdef"


def node_doc(tmp_path, name, upstream_url, **sib):
    doc = make_config(tmp_path / name, {"central.example": upstream_url}, default="central.example")
    doc["siblings"] = {"mdns": False, "node_id": name, "health_interval": "0.2s",
                       "readmit_after": 1, "fail_after": 2, "timeout": "1s",
                       "read_timeout": "1s", **sib}
    return doc


async def wait_for(pred, timeout=10.0):
    return await eventually(pred, timeout, 0.05)


@asynccontextmanager
async def cluster(tmp_path, up_url, n=3, extra_peers=(), **sib):
    docs = [node_doc(tmp_path, f"n{i}", up_url, **sib) for i in range(n)]
    urls = ["http://" + d["listen"] for d in docs]
    for i, d in enumerate(docs):
        d["siblings"]["peers"] = [u for j, u in enumerate(urls) if j != i] + list(extra_peers)
    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(EdgeServer(d)) for d in docs]
        live = n - 1 + len(extra_peers)
        assert await wait_for(lambda: all(len(x.services.siblings.live()) == live for x in nodes)), \
            [x.services.siblings.status() for x in nodes]
        yield nodes


def blob_gets(up, digest):
    return up.count("GET", rf"/v2/demo/app/blobs/{digest}")


async def fetch(session, node, path, **kw):
    async with session.get(node.url + path, **kw) as r:
        return r.status, dict(r.headers), await r.read()


# -- parts -----------------------------------------------------------------------------

def test_hop_signatures_bind_sender_receiver_path_time_and_are_used_once():
    now = [1000.0]
    n2 = hopauth.HopVerifier(SECRET, "n2", clock=lambda: now[0])
    path = "/v2/a/blobs/sha256:ab?ns=x"
    h = hopauth.sign(SECRET, "n1", "n2", "GET", path, now=1000)[hopauth.AUTH]
    now[0] = 1010
    assert n2.verify("n1", h, "GET", path) is None
    assert "replayed" in n2.verify("n1", h, "GET", path)                    # once only
    fresh = lambda **kw: hopauth.sign(SECRET, "n1", kw.get("to", "n2"), "GET", path,  # noqa: E731
                                      now=kw.get("at", 1000))[hopauth.AUTH]
    assert "not for this node" in hopauth.HopVerifier(SECRET, "n3").verify("n1", fresh(), "GET", path)
    assert n2.verify("n1", fresh(), "GET", "/v2/a/blobs/sha256:cd?ns=x") == "wrong hop signature"
    assert n2.verify("n9", fresh(), "GET", path) == "wrong hop signature"
    assert n2.verify("n1", fresh(), "HEAD", path) == "wrong hop signature"
    other = hopauth.sign(b"another-secret-0123456789", "n1", "n2", "GET", path, now=1000)[hopauth.AUTH]
    assert n2.verify("n1", other, "GET", path) == "wrong hop signature"
    assert "off" in n2.verify("n1", fresh(at=1010 - hopauth.WINDOW - 1), "GET", path)
    assert n2.verify("n1", None, "GET", path) == "hop request without a signature"
    assert n2.verify("n1", "garbage", "GET", path) == "malformed hop signature"
    # Unaddressed (the receiver's id not known yet): only for the health check.
    assert "not for this node" in n2.verify("n1", fresh(to=None), "GET", path)
    ping = hopauth.sign(SECRET, "n1", None, "GET", hopauth.PING_PATH + "?challenge=c", now=1000)
    assert n2.verify("n1", ping[hopauth.AUTH], "GET", hopauth.PING_PATH + "?challenge=c") is None
    assert hopauth.AUTH not in hopauth.sign(None, "n1", "n2", "GET", "/")


def test_rendezvous_agrees_spreads_and_moves_little():
    nodes = [f"node{i}" for i in range(4)]
    digests = [f"sha256:{i:064x}" for i in range(2000)]
    owners = {d: rendezvous(nodes, d) for d in digests}
    assert owners == {d: rendezvous(list(reversed(nodes)), d) for d in digests}  # order-free
    per = {n: sum(1 for o in owners.values() if o == n) for n in nodes}
    assert all(350 < c < 650 for c in per.values()), per
    # node3 leaves: only the digests it owned move.
    after = {d: rendezvous(nodes[:3], d) for d in digests}
    moved = [d for d in digests if after[d] != owners[d]]
    assert moved and all(owners[d] == "node3" for d in moved)


def test_peer_table_drops_readmits_ignores_self_and_shuns_wrong_bytes():
    now = [100.0]
    t = PeerTable("me", fail_after=3, readmit_after=2, bad_for=60, clock=lambda: now[0])
    assert t.add("http://x:1", "mdns", "me") is None            # ourselves
    p = t.add("http://a:1", "static")
    assert t.live() == []
    t.check_passed(p, "a", "1")
    assert t.live() == []                                       # one good check is not enough
    t.check_passed(p, "a", "1")
    assert t.live() == [p]
    t.check_failed(p, "x")
    t.check_failed(p, "x")
    assert t.live() == [p]                                      # two failures: still in
    t.check_failed(p, "x")
    assert t.live() == []
    t.check_passed(p, "a", "1")
    t.check_passed(p, "a", "1")
    assert t.live() == [p]
    t.wrong_bytes(p, "bad")
    assert t.live() == []
    now[0] += 61
    assert t.live() == [p]
    s = t.add("http://self:1", "static")
    t.check_passed(s, "me", "1")                                # a static list naming us too
    assert [q.url for q in t.all()] == ["http://a:1"]
    t.add("http://a2:1", "mdns", "a")                           # the same node twice: used once
    t.check_passed(t.all()[1], "a", "1"), t.check_passed(t.all()[1], "a", "1")
    assert len(t.live()) == 1


def test_the_address_of_a_sibling_is_on_our_lan_and_not_ours():
    import ipaddress
    from edgecache.siblings.discovery import best_address
    local = [(ipaddress.IPv4Address("10.20.0.11"), ipaddress.IPv4Network("10.20.0.0/24")),
             (ipaddress.IPv4Address("172.17.0.1"), ipaddress.IPv4Network("172.17.0.0/16")),
             (ipaddress.IPv4Address("10.42.1.1"), ipaddress.IPv4Network("10.42.1.0/24"))]
    # docker0 (the same on every node), its own CNI bridge, then the LAN address.
    assert best_address(["172.17.0.1", "10.42.2.1", "10.20.0.12"], local) == "10.20.0.12"
    assert best_address(["172.17.0.1", "192.168.9.9"], local) == "192.168.9.9"
    assert best_address(["172.17.0.1"], local) is None


def test_config_names_bad_sibling_keys(tmp_path):
    def cfg(sib):
        return build({"upstreams": {"r.example": {"url": "http://127.0.0.1:1"}}, "siblings": sib,
                      "data_dir": str(tmp_path)}, source="t", env={}, uid=0, base=tmp_path)
    assert not cfg(None).siblings.enabled
    assert cfg({}).siblings.enabled and cfg({}).siblings.mdns
    for sib, key in (({"peers": ["10.0.0.2:5000"]}, "siblings.peers"),
                     ({"interfaces": "eth0"}, "siblings.interfaces"),
                     ({"secret_file": "nope"}, "siblings.secret_file"),
                     ({"timeout": "0s"}, "siblings.timeout"),
                     ({"node_id": "a b"}, "siblings.node_id"),
                     ({"node_id": "x" * 49}, "siblings.node_id"),
                     ({"min_rate": "fast"}, "siblings.min_rate"),
                     ({"tls": {"cert_file": "nope"}}, "siblings.tls.cert_file"),
                     ({"fail_after": 0}, "siblings.fail_after"),
                     ({"multicast": True}, "siblings.multicast")):
        with pytest.raises(ConfigError) as e:
            cfg(sib)
        assert key in str(e.value), (sib, str(e.value))
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        cfg({"secret_file": "short"})
    (tmp_path / "secret").write_bytes(SECRET + b"\n")
    c = cfg({"secret_file": "secret", "peers": ["http://10.0.0.2:5000/"]})
    assert c.siblings.secret == SECRET and c.siblings.peers == ("http://10.0.0.2:5000",)
    assert "branch-secret" not in repr(c)


# -- the miss path ----------------------------------------------------------------------------

async def test_three_nodes_missing_one_blob_together_fetch_it_from_the_wan_once(tmp_path):
    img = make_image(41, layers=1, layer_size=8 * MiB)
    layer = img.layers[0]
    async with FaultyUpstream({"demo/app:v1": img}) as up:
        up.fault("slow", digest=layer.digest, rate=16 * MiB)      # ~0.5 s: the pulls overlap
        async with cluster(tmp_path, up.url) as nodes, aiohttp.ClientSession() as s:
            results = await asyncio.gather(*(fetch(s, n, f"/v2/demo/app/blobs/{layer.digest}")
                                             for n in nodes for _ in range(3)))
            assert all(st == 200 and body == layer.data for st, _, body in results)
            assert blob_gets(up, layer.digest) == 1
            owner = rendezvous([f"n{i}" for i in range(3)], layer.digest)
            for n in nodes:
                assert await n.stored(layer.digest)
                st = n.services.siblings.status()
                fetched = sum(p["bytes_fetched"] for p in st["peers"])
                if n.services.siblings.node_id == owner:
                    assert fetched == 0 and sum(st["served_bytes_by_node"].values()) == 2 * layer.size
                else:
                    assert fetched == layer.size
            # And the metrics say so.
            async with s.get(nodes[0].url + "/metrics") as r:
                text = await r.text()
            assert "edgecache_sibling_up{" in text and "edgecache_sibling_fetched_bytes_total" in text


async def test_one_wan_fetch_even_when_the_upstream_is_slow_to_answer(tmp_path):
    """The owner answers its siblings once the upstream does: a first byte later than
    the siblings' own timeout must not make them fetch it themselves."""
    img = make_image(51, layers=1, layer_size=4 * MiB)
    layer = img.layers[0]
    async with FaultyUpstream({"demo/app:v1": img}) as up:
        up.fault("slow", digest=layer.digest, rate=16 * MiB, delay=2.5)   # timeout is 1 s
        async with cluster(tmp_path, up.url) as nodes, aiohttp.ClientSession() as s:
            results = await asyncio.gather(*(fetch(s, n, f"/v2/demo/app/blobs/{layer.digest}")
                                             for n in nodes))
            assert all(st == 200 and body == layer.data for st, _, body in results)
            assert blob_gets(up, layer.digest) == 1


@pytest.mark.parametrize("signed", [False, True])
async def test_with_the_wan_cut_a_node_gets_blob_manifest_and_tag_from_a_signed_sibling(tmp_path, signed):
    img = make_image(42, layers=2, layer_size=1 * MiB)
    sib = {}
    if signed:
        (tmp_path / "secret").write_bytes(SECRET)
        sib["secret_file"] = str(tmp_path / "secret")
    async with FaultyUpstream({"demo/app:v1": img}) as up:
        async with cluster(tmp_path, up.url, n=2, **sib) as (a, b), aiohttp.ClientSession() as s:
            # a pulls the image while the WAN is up.
            st, h, man = await fetch(s, a, "/v2/demo/app/manifests/v1")
            assert st == 200
            for blob in img.blobs:
                assert (await fetch(s, a, f"/v2/demo/app/blobs/{blob.digest}"))[0] == 200
            await asyncio.gather(*(a.stored(x.digest) for x in img.blobs))
            # b fetched for a what it is the rendezvous owner of: the rest it must get from a.
            missing = [x for x in img.blobs if not b.services.store.has(parse_digest(x.digest))]
            assert missing
            await up.stop()                                          # the WAN is cut
            # b never pulled it: tag (stale, from a: only signed tag answers are taken),
            # manifest by digest and blobs from a (checked by their digests: any sibling).
            st, h, body = await fetch(s, b, "/v2/demo/app/manifests/v1")
            if signed:
                assert st == 200 and body == man and h["X-Edgecache-Stale"] == "true"
                assert h["Docker-Content-Digest"] == img.digest
            else:
                assert st == 503
            st, _, body = await fetch(s, b, f"/v2/demo/app/manifests/{img.digest}")
            # Without a secret a sibling may be anyone on the LAN: that the repository has
            # a digest is taken from the upstream only, and it cannot be asked now.
            assert (st, body) == (200, man) if signed else st == 503
            for blob in img.blobs:
                st, _, body = await fetch(s, b, f"/v2/demo/app/blobs/{blob.digest}")
                if signed or blob not in missing:
                    assert st == 200 and body == blob.data
                else:
                    assert st == 503
            fetched = b.services.siblings.table.stats["n0"].bytes_from
            assert fetched >= sum(x.size for x in missing) if signed else fetched == 0
            assert b.services.blobs.upstreams.clients["central.example"].last_error  # tried first
            # A tag no node knows is still an error, not a hang.
            st, _, _ = await fetch(s, b, "/v2/demo/app/manifests/v2")
            assert st in (404, 503)


async def test_a_node_that_serves_rotten_bytes_is_detected_and_bypassed(tmp_path):
    img = make_image(43, layers=1, layer_size=2 * MiB)
    layer = img.layers[0]
    async with FaultyUpstream({"demo/app:v1": img}) as up:
        async with cluster(tmp_path, up.url, n=2) as (a, b), aiohttp.ClientSession() as s:
            assert (await fetch(s, a, f"/v2/demo/app/blobs/{layer.digest}"))[0] == 200
            assert await a.stored(layer.digest)
            # b may have fetched it for a (the rendezvous owner): b must not hold it.
            await b.services.store.delete(parse_digest(layer.digest))
            # Bit rot on a's disk: a now serves wrong bytes (it does not re-hash on every send).
            path = layout.blob_path(a.config.data_dir, parse_digest(layer.digest))
            data = bytearray(path.read_bytes())
            data[len(data) // 3] ^= 0x01
            path.write_bytes(bytes(data))
            up.reset_counts()
            st, _, body = await fetch(s, b, f"/v2/demo/app/blobs/{layer.digest}")
            assert st == 200 and body == layer.data           # the client never noticed
            assert blob_gets(up, layer.digest) == 1           # ...b went to the upstream
            peer = b.services.siblings.status()["peers"][0]
            assert peer["state"] == "bad" and peer["failures"]["wrong_bytes"] == 1
            assert b.services.siblings.live() == []
            assert await b.stored(layer.digest)


@pytest.mark.parametrize("mode", ["cut", "stall", "corrupt", "trickle"])
async def test_a_sibling_failing_mid_transfer_costs_a_bounded_delay_not_the_pull(tmp_path, mode):
    img = make_image(44, layers=1, layer_size=4 * MiB)
    layer = img.layers[0]
    async with FaultyUpstream({"demo/app:v1": img}) as up, \
            FakeSibling("fake", {layer.digest: layer.data}, mode=mode) as fake:
        doc = node_doc(tmp_path, "n0", up.url, peers=[fake.url])
        async with EdgeServer(doc) as node, aiohttp.ClientSession() as s:
            assert await wait_for(lambda: len(node.services.siblings.live()) == 1)
            t0 = time.monotonic()
            st, _, body = await fetch(s, node, f"/v2/demo/app/blobs/{layer.digest}")
            took = time.monotonic() - t0
            assert st == 200 and body == layer.data
            assert fake.counts["get"] == 1 and blob_gets(up, layer.digest) == 1
            assert took < 1.0 + 3.0, took          # read_timeout (1 s) plus the upstream fetch
            peer = node.services.siblings.status()["peers"][0]
            if mode == "corrupt":
                assert peer["state"] == "bad"
            elif mode == "trickle":
                assert peer["failures"] == {"slow": 1}, peer
            else:
                assert peer["failures"], peer


async def test_hop_requests_are_never_passed_on(tmp_path):
    img = make_image(45, layers=1, layer_size=1 * MiB)
    layer = img.layers[0]
    async with FaultyUpstream({"demo/app:v1": img}) as up, \
            FakeSibling("fake", {layer.digest: layer.data}) as fake:
        doc = node_doc(tmp_path, "n0", up.url, peers=[fake.url])
        async with EdgeServer(doc) as node, aiohttp.ClientSession() as s:
            assert await wait_for(lambda: len(node.services.siblings.live()) == 1)
            hop = {hopauth.HOP: "fake"}      # as if the fake sibling asked us
            # A probe for something it does not hold: 404, nobody asked.
            async with s.head(f"{node.url}/v2/demo/app/blobs/{layer.digest}", headers=hop) as r:
                assert r.status == 404
            # A hop GET: from the upstream, never from the sibling that has it.
            st, _, body = await fetch(s, node, f"/v2/demo/app/blobs/{layer.digest}", headers=hop)
            assert st == 200 and body == layer.data
            assert fake.counts["probe"] == 0 and fake.counts["get"] == 0
            assert blob_gets(up, layer.digest) == 1
            assert await wait_for(lambda: node.services.siblings.status()["served_bytes_by_node"]
                                  == {"fake": layer.size})
            # Served bytes are only counted for siblings we know (anyone can send the marker).
            await fetch(s, node, f"/v2/demo/app/blobs/{layer.digest}", headers={hopauth.HOP: "who"})
            await asyncio.sleep(0.1)
            assert node.services.siblings.status()["served_bytes_by_node"] == {"fake": layer.size}
            # Now it holds it: the probe says so.
            assert await node.stored(layer.digest)
            async with s.head(f"{node.url}/v2/demo/app/blobs/{layer.digest}", headers=hop) as r:
                assert r.status == 200 and r.headers["X-Edgecache-Have"] == "stored"
            # A client that is not a sibling does ask the sibling (which has it).
            other = make_image(46, layers=1, layer_size=1 * MiB).layers[0]
            fake.blobs[other.digest] = other.data
            up.add("demo/app:v2", make_image(46, layers=1, layer_size=1 * MiB))
            st, _, body = await fetch(s, node, f"/v2/demo/app/blobs/{other.digest}")
            assert st == 200 and body == other.data and fake.counts["get"] == 1
            assert blob_gets(up, other.digest) == 0
            # Our own requests carried the marker.
            assert all(h.get(hopauth.HOP) == "n0" for h in fake.hop_headers)


async def test_with_a_secret_hop_requests_must_be_signed(tmp_path):
    img = make_image(47, layers=1, layer_size=1 * MiB)
    layer = img.layers[0]
    (tmp_path / "secret").write_bytes(SECRET)
    (tmp_path / "wrong").write_bytes(b"not-the-branch-secret-000")
    async with FaultyUpstream({"demo/app:v1": img}) as up:
        docs = [node_doc(tmp_path, "n0", up.url, secret_file=str(tmp_path / "secret")),
                node_doc(tmp_path, "n1", up.url, secret_file=str(tmp_path / "secret")),
                node_doc(tmp_path, "n2", up.url, secret_file=str(tmp_path / "wrong"))]
        urls = ["http://" + d["listen"] for d in docs]
        for i, d in enumerate(docs):
            d["siblings"]["peers"] = [u for j, u in enumerate(urls) if j != i]
        async with EdgeServer(docs[0]) as a, EdgeServer(docs[1]) as b, EdgeServer(docs[2]) as c, \
                aiohttp.ClientSession() as s:
            assert await wait_for(lambda: [p.node_id for p in a.services.siblings.live()] == ["n1"])
            await asyncio.sleep(1.0)     # several check rounds: n2 never gets in, nor lets in
            assert [p.node_id for p in a.services.siblings.live()] == ["n1"]
            assert c.services.siblings.live() == []
            n2 = next(p for p in a.services.siblings.status()["peers"] if p["url"] == urls[2])
            assert "401" in (n2["last_error"] or "")
            path = f"/v2/demo/app/blobs/{layer.digest}"
            st, _, _ = await fetch(s, a, path, headers={hopauth.HOP: "n1"})
            assert st == 401
            st, _, _ = await fetch(s, a, path, headers=hopauth.sign(b"x" * 20, "n1", "n0", "GET", path))
            assert st == 401
            signed = hopauth.sign(SECRET, "n1", "n0", "GET", path)
            st, _, body = await fetch(s, a, path, headers=signed)
            assert st == 200 and body == layer.data
            # The same signed request again, or to another node: refused.
            assert (await fetch(s, a, path, headers=signed))[0] == 401
            assert (await fetch(s, b, path, headers=hopauth.sign(SECRET, "n2", "n0", "GET", path)))[0] == 401
            # A sibling may pull, nothing else.
            gc = hopauth.sign(SECRET, "n1", "n0", "POST", "/_edgecache/gc")
            async with s.post(a.url + "/_edgecache/gc", headers=gc) as r:
                assert r.status == 403
            # Clients without the marker are ordinary clients: unaffected.
            st, _, body = await fetch(s, b, path)
            assert st == 200 and body == layer.data


async def test_a_sibling_that_goes_away_is_dropped_and_readmitted_when_back(tmp_path):
    async with FaultyUpstream({}) as up, FakeSibling("fake", {}) as fake:
        doc = node_doc(tmp_path, "n0", up.url, peers=[fake.url])
        async with EdgeServer(doc) as node:
            sib = node.services.siblings
            assert await wait_for(lambda: len(sib.live()) == 1)
            await fake.stop()
            assert await wait_for(lambda: sib.live() == [], 5)
            assert sib.status()["peers"][0]["state"] == "down"
            await fake.start()
            assert await wait_for(lambda: len(sib.live()) == 1, 5)


async def test_node_id_is_made_once_and_kept(tmp_path):
    async with FaultyUpstream({}) as up:
        doc = node_doc(tmp_path, "n0", up.url)
        del doc["siblings"]["node_id"]
        async with EdgeServer(doc) as node:
            first = node.services.siblings.node_id
        async with EdgeServer(doc) as node:
            assert node.services.siblings.node_id == first
        assert (tmp_path / "n0" / "node-id").read_text().strip() == first
        assert os.uname().nodename.split(".")[0][:10] in first


async def test_siblings_over_mutual_tls(tmp_path):
    """Listeners that demand a client certificate: siblings present theirs, verify
    each other's, and one without a certificate is never admitted."""
    from tests.support.certs import make_certs
    certs = make_certs(tmp_path / "certs")
    img = make_image(48, layers=1, layer_size=1 * MiB)
    layer = img.layers[0]
    listener = {"cert_file": str(certs.server_cert), "key_file": str(certs.server_key),
                "client_ca_file": str(certs.ca), "require_client_cert": True}
    mine = {"ca_file": str(certs.ca), "cert_file": str(certs.client_cert),
            "key_file": str(certs.client_key)}
    async with FaultyUpstream({"demo/app:v1": img}) as up:
        docs = [node_doc(tmp_path, f"n{i}", up.url, tls=t) for i, t in
                enumerate((mine, mine, {"ca_file": str(certs.ca)}))]
        urls = ["https://" + d["listen"] for d in docs]
        for i, d in enumerate(docs):
            d["tls"] = listener
            d["siblings"]["peers"] = [u for j, u in enumerate(urls) if j != i]
        async with EdgeServer(docs[0]) as a, EdgeServer(docs[1]) as b, EdgeServer(docs[2]) as c:
            def live(n):
                return sorted(p.node_id for p in n.services.siblings.live())
            assert await wait_for(lambda: live(a) == ["n1", "n2"] and live(b) == ["n0", "n2"]), \
                a.services.siblings.status()
            await asyncio.sleep(0.6)
            assert live(c) == []                   # c has no certificate: a and b refuse it
            # (With TLS 1.3 the refusal reaches c as the server hanging up.)
            assert all(p["state"] == "down" and p["consecutive_failures"] >= 2
                       for p in c.services.siblings.status()["peers"])
            ctx = __import__("ssl").create_default_context(cafile=str(certs.ca))
            ctx.load_cert_chain(str(certs.client_cert), str(certs.client_key))
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
                path = f"/v2/demo/app/blobs/{layer.digest}"
                a.url, b.url = urls[0], urls[1]
                assert (await fetch(s, a, path))[0] == 200
                assert await a.stored(layer.digest)
                await b.services.store.delete(parse_digest(layer.digest))   # b may be its owner
                await up.stop()
                st, _, body = await fetch(s, b, path)
                assert st == 200 and body == layer.data
                assert b.services.siblings.table.stats["n0"].bytes_from == layer.size


async def test_with_a_secret_an_impostor_is_never_admitted(tmp_path):
    """Anything that answers the health check like an edgecache, but cannot prove it
    holds the secret, is not a sibling (and never gets a signed request)."""
    (tmp_path / "secret").write_bytes(SECRET)
    img = make_image(49, layers=1, layer_size=1 * MiB)
    layer = img.layers[0]
    async with FaultyUpstream({"demo/app:v1": img}) as up, \
            FakeSibling("impostor", {layer.digest: b"x" * layer.size}) as fake:
        doc = node_doc(tmp_path, "n0", up.url, peers=[fake.url], secret_file=str(tmp_path / "secret"))
        async with EdgeServer(doc) as node, aiohttp.ClientSession() as s:
            await asyncio.sleep(1.0)
            peer = node.services.siblings.status()["peers"][0]
            assert peer["state"] == "down" and "secret" in peer["last_error"], peer
            # Nor can it have the node answer a challenge for it: proofs are only given
            # to signed hop requests.
            async with s.get(node.url + "/_edgecache/sibling?challenge=abc") as r:
                assert "proof" not in await r.json()
            st, _, body = await fetch(s, node, f"/v2/demo/app/blobs/{layer.digest}")
            assert st == 200 and body == layer.data
            assert fake.counts["probe"] == fake.counts["get"] == 0


async def test_a_tag_answer_must_be_signed_by_the_sibling_when_there_is_a_secret():
    """A tag's digest is the one answer not checked by its digest: with a secret, the
    sibling signs it (bound to the request), and an unsigned one is refused."""
    from edgecache.pull.routing import Route
    from edgecache.siblings.client import SiblingClient
    from edgecache.siblings.peers import Peer
    img = make_image(50, layers=1, layer_size=1024)
    async with FakeSibling("b", {}) as fake:
        fake.tags["v1"] = (img.digest, img.manifest)
        peer = Peer(fake.url, "static", node_id="b")
        route = Route("central.example", "demo/app")
        for secret, expect_ok in ((None, True), (SECRET, False)):
            client = SiblingClient("a", secret, timeout=1, read_timeout=1)
            await client.start()
            try:
                if expect_ok:
                    ans = await client.tag(peer, route, "v1", ["*/*"], 1 << 20)
                    assert ans.digest == img.digest and ans.body == img.manifest
                else:
                    with pytest.raises(SiblingError, match="not signed"):
                        await client.tag(peer, route, "v1", ["*/*"], 1 << 20)
            finally:
                await client.close()


async def test_a_signed_sibling_gets_only_what_belongs_to_the_route_it_names(tmp_path):
    """Content belongs to the route it came through: a signed sibling naming an upstream
    this node does not have, or another repository of the same upstream, gets nothing
    (a 404, as Distribution answers); under the right route it gets the blob."""
    (tmp_path / "secret").write_bytes(SECRET)
    img = make_image(52, layers=1, layer_size=256 * 1024)
    layer = img.layers[0]
    async with FaultyUpstream({"demo/app:v1": img}) as up:
        doc = node_doc(tmp_path, "n0", up.url, secret_file=str(tmp_path / "secret"))
        async with EdgeServer(doc) as node, aiohttp.ClientSession() as s:
            path = f"/v2/demo/app/blobs/{layer.digest}"
            assert (await fetch(s, node, path))[0] == 200 and await node.stored(layer.digest)
            up.reset_counts()
            for method in ("HEAD", "GET"):
                h = hopauth.sign(SECRET, "n9", "n0", method, path)
                async with s.request(method, node.url + path, headers=h) as r:
                    assert r.status == 200
                    if method == "GET":
                        assert await r.read() == layer.data
            for other in (path + "?ns=other.example", f"/v2/other/repo/blobs/{layer.digest}"):
                for method in ("HEAD", "GET"):
                    h = hopauth.sign(SECRET, "n9", "n0", method, other)
                    async with s.request(method, node.url + other, headers=h) as r:
                        assert r.status == 404, (method, other)
            # The other repository was asked about once (HEAD), and its "no" remembered;
            # no body crossed the WAN.
            assert up.count("HEAD", "/v2/other/repo/blobs/.*") == 1
            assert up.count("GET", "/v2/.*/blobs/") == 0
            unknown = f"/v2/demo/app/blobs/sha256:{'0' * 64}?ns=other.example"
            st, _, _ = await fetch(s, node, unknown, headers=hopauth.sign(SECRET, "n9", "n0", "GET", unknown))
            assert st == 404
            # Unsigned (a client setting the marker): refused when there is a secret.
            other = path + "?ns=other.example"
            st, _, body = await fetch(s, node, other, headers={hopauth.HOP: "n9"})
            assert st == 401


async def test_without_a_secret_the_hop_marker_opens_nothing(tmp_path):
    img = make_image(53, layers=1, layer_size=256 * 1024)
    layer = img.layers[0]
    async with FaultyUpstream({"demo/app:v1": img}) as up:
        doc = node_doc(tmp_path, "n0", up.url)
        doc["access"] = {"networks": ["10.99.0.0/16"]}        # not loopback
        async with EdgeServer(doc) as node, aiohttp.ClientSession() as s:
            path = f"/v2/demo/app/blobs/{layer.digest}?ns=other.example"
            st, _, _ = await fetch(s, node, path, headers={hopauth.HOP: "n9"})
            assert st == 403                                  # access.networks still applies


async def test_a_released_fill_whose_sibling_stalls_goes_on_from_the_upstream(tmp_path, monkeypatch,
                                                                              caplog):
    """Over HTTP: the hold limit passes (patched down to 0.3 s), the client starts
    getting bytes, the sibling goes silent; the upstream finishes from that offset
    (this upstream ignores Range: its first bytes are skipped)."""
    from edgecache.pull import fill as fill_module
    monkeypatch.setattr(fill_module, "HOLD_LIMIT", 0.3)
    caplog.set_level("INFO", logger="edgecache.fill")
    img = make_image(54, layers=1, layer_size=4 * MiB)
    layer = img.layers[0]
    async with FaultyUpstream({"demo/app:v1": img}) as up, \
            FakeSibling("fake", {layer.digest: layer.data}, mode="stall") as fake:
        doc = node_doc(tmp_path, "n0", up.url, peers=[fake.url], min_rate="1KiB")
        async with EdgeServer(doc) as node, aiohttp.ClientSession() as s:
            assert await wait_for(lambda: len(node.services.siblings.live()) == 1)
            st, _, body = await fetch(s, node, f"/v2/demo/app/blobs/{layer.digest}")
            assert st == 200 and body == layer.data
            assert blob_gets(up, layer.digest) == 1 and fake.counts["get"] == 1
            assert await node.stored(layer.digest)
            sent_by_sibling = node.services.siblings.table.stats["fake"].bytes_from
            assert 0 < sent_by_sibling < layer.size
            assert "streaming before verification" in caplog.text
            assert f"failed after {sent_by_sibling} bytes" in caplog.text
            assert "going on from the upstream" in caplog.text


async def test_metrics_have_one_series_per_sibling(tmp_path):
    """A sibling both listed and discovered (here: listed twice) is one node in /metrics."""
    from prometheus_client.parser import text_string_to_metric_families
    async with FaultyUpstream({}) as up, FakeSibling("fake", {}) as fake:
        doc = node_doc(tmp_path, "n0", up.url,
                       peers=[fake.url, fake.url.replace("127.0.0.1", "localhost"),
                              "http://127.0.0.1:9"])
        async with EdgeServer(doc) as node, aiohttp.ClientSession() as s:
            assert await wait_for(lambda: len(node.services.siblings.live()) == 1)
            node.services.siblings.table.stats["fake"].failures["timeout"] = 2
            async with s.get(node.url + "/metrics") as r:
                text = await r.text()
    seen = set()
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in seen, key
            seen.add(key)
    up_series = {dict(k[1])["url"]: k for k in seen if k[0] == "edgecache_sibling_up"}
    assert "http://127.0.0.1:9" in up_series              # never reached: still there, at 0
    assert ("edgecache_sibling_failures_total", (("node", "fake"), ("reason", "timeout"))) in seen


def test_claimed_node_ids_cost_nothing_until_admitted():
    """Anyone can advertise ids over mDNS: counters are kept per id only for nodes that
    passed their checks, and ids no longer listed are let go when there are many."""
    from edgecache.siblings import peers as peers_module
    t = PeerTable("me", fail_after=3, readmit_after=1, bad_for=60)
    for i in range(5000):
        t.add("http://x:1", "mdns", f"claim{i}")
    assert t.stats == {} and len(t.all()) == 1
    for i in range(peers_module.MAX_NODES + 10):
        p = t.add(f"http://n{i}:1", "mdns", f"n{i}")
        t.check_passed(p, f"n{i}", "1")
        t.remove(p.url, "mdns")
    assert len(t.stats) <= peers_module.MAX_NODES
    p = t.add("http://a:1", "static")
    p.stats.failures["timeout"] = 1            # before the id is known
    t.check_passed(p, "a", "1")
    assert t.stats["a"].failures == {}         # a claim's counters start afresh with the id
