"""Bounds: no client or upstream can make the cache grow past its budget, hold
memory, or stall it. Hostile clients and a hostile upstream of the tests' own,
each bound asserted with a number."""
import asyncio
import base64
import ipaddress
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import bcrypt
import pytest
from aiohttp import web
from yarl import URL

from edgecache.reference import parse_digest
from edgecache.store import layout
from edgecache.upstream.redirects import refusal
from tests.support.edge import EdgeProcess, EdgeServer, make_config
from tests.support.faulty import FaultyUpstream
from tests.support.httpserver import HttpServer
from tests.support.ports import free_port
from tests.support.images import make_image

MiB = 1 << 20


def _disk_bytes(d: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(d):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass
    return total


async def test_fills_of_clients_that_hang_up_are_cancelled_and_the_disk_stays_in_budget(tmp_path):
    n, budget = 16, 24 * MiB
    img = make_image(401, layers=n + 3, layer_size=8 * MiB)
    layers = img.layers
    blob = max(len(l.data) for l in layers)              # a little over 8 MiB (gzip framing)
    async with FaultyUpstream({"demo/app:v1": img}) as up:
        doc = make_config(tmp_path / "data", {"central.example": up.url}, default="central.example",
                          cache={"max_size": budget, "abandon_after": "1s", "evict_interval": "0.2s"})
        async with EdgeServer(doc) as edge, aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0)) as s:
            store, fills = edge.services.store, edge.services.blobs.fills
            for layer in layers[-2:]:                    # 16 MiB already cached
                async with s.get(f"{edge.url}/v2/demo/app/blobs/{layer.digest}") as r:
                    assert r.status == 200 and await r.read() == layer.data
            assert await edge.stored(layers[-1].digest)
            up.fault("slow", rate=1 * MiB)               # a slow WAN: 8 s a blob
            up.reset_counts()

            samples: list[tuple[int, int, int]] = []     # stored on disk, in temp files, reserved
            stop = asyncio.Event()

            async def sample() -> None:
                while not stop.is_set():
                    stored = await asyncio.to_thread(_disk_bytes, layout.blobs_dir(store.data_dir))
                    tmp = await asyncio.to_thread(_disk_bytes, layout.tmp_dir(store.data_dir))
                    samples.append((stored, tmp, store.reserved_bytes))
                    await asyncio.sleep(0.05)

            async def hang_up(digest: str, after: int) -> None:
                async with s.get(f"{edge.url}/v2/demo/app/blobs/{digest}") as r:
                    assert r.status == 200
                    await r.content.readexactly(after)
                    r.close()                            # gone mid-body

            sampler = asyncio.create_task(sample())
            # 16 clients take 256 KiB each and leave; one takes 5 MiB of 8 (past half) and leaves.
            await asyncio.gather(*(hang_up(l.digest, 256 * 1024) for l in layers[:n]),
                                 hang_up(layers[n].digest, 5 * MiB))
            left = asyncio.get_running_loop().time()
            for _ in range(200):
                if not fills.active():
                    break
                await asyncio.sleep(0.05)
            settled = asyncio.get_running_loop().time() - left
            for _ in range(40):                          # idle: the evictor alone
                if store.budgeted_bytes() <= store.low:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await sampler

            assert not fills.active(), "fills went on after every client had left"
            assert fills.abandoned == n and settled < 6.0
            assert await edge.stored(layers[n].digest)   # past finish_fraction: finished
            assert not any(store.has(parse_digest(l.digest)) for l in layers[:n])
            full = (n + 1) * blob
            assert up.sent_bytes < 0.45 * full, (up.sent_bytes, full)
            assert store.budgeted_bytes() <= store.low and store.reserved_bytes == 0
            worst = max(st for st, _, _ in samples)
            # The disk never holds more blobs than the budget plus one blob, and the temp
            # files are the fills' bytes, all gone once they are.
            assert worst <= budget + blob, (worst, budget)
            assert _disk_bytes(layout.tmp_dir(store.data_dir)) == 0
            edge.last_figures = {"worst_stored": worst, "sent": up.sent_bytes, "full": full,
                                 "settled_s": settled}
            print(f"\nhang-ups: stored at most {worst / MiB:.1f} MiB (budget {budget / MiB:.0f}), "
                  f"upstream sent {up.sent_bytes / MiB:.1f} of {full / MiB:.0f} MiB, fills gone "
                  f"{settled:.1f} s after the clients")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class TagUpstream:
    """Tag lists of every kind a hostile or careless registry sends, counting what it
    managed to send."""

    def __init__(self) -> None:
        self.queries: list[dict[str, str]] = []
        self.sent = 0
        self.many = [f"t{i:06d}" for i in range(25_000)]

    async def tags(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.queries.append(dict(request.query))
        if name.startswith("huge"):              # 39 MB, announced
            body = json.dumps({"name": name, "tags": [f"{i:038d}" for i in range(900_000)]}).encode()
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = len(body)
            await resp.prepare(request)
            for i in range(0, len(body), 1 << 16):
                self.sent += len(body[i:i + (1 << 16)])
                await resp.write(body[i:i + (1 << 16)])
            return resp
        if name == "endless":                    # chunked, never ends
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            await resp.write(b'{"name": "endless", "tags": [')
            while True:
                chunk = b'"x",' * 16384
                self.sent += len(chunk)
                await resp.write(chunk)
        tags = self.many
        if name == "tokened":                    # pages by an opaque token (as Quay does)
            page = int(request.query.get("next_page", "0x0"), 16)
            n = int(request.query.get("n", 50))
            chunk = tags[page * n:(page + 1) * n]
            more = (page + 1) * n < len(tags)
            headers = {"Link": f'</v2/{name}/tags/list?n={n}&next_page={page + 1:#x}>; rel="next"'} if more else {}
            return web.json_response({"name": name, "tags": chunk}, headers=headers)
        if "last" in request.query:
            tags = [t for t in tags if t > request.query["last"]]
        if name == "ignores-n":                  # every tag after `last`, whatever n says
            return web.json_response({"name": name, "tags": tags})
        n = int(request.query.get("n", 100))
        headers = {}
        if len(tags) > n:                        # an absolute Link to somewhere else
            headers["Link"] = f'<https://elsewhere.example/v2/{name}/tags/list?n={n}&last={tags[n - 1]}>; rel="next"'
        return web.json_response({"name": name, "tags": tags[:n]}, headers=headers)


async def test_tag_lists_are_capped_paged_and_never_point_elsewhere(tmp_path):
    tu = TagUpstream()
    async with HttpServer([web.get("/v2/{name:.+}/tags/list", tu.tags)]) as up:
        doc = make_config(tmp_path / "data", {"central.example": up.url}, default="central.example")
        async with EdgeServer(doc) as edge, aiohttp.ClientSession() as s:
            meta = edge.services.tags.meta
            # Oversized, announced or endless: refused once the cap is passed.
            for name in ("huge", "endless"):
                tu.sent = 0
                async with s.get(f"{edge.url}/v2/{name}/tags/list") as r:
                    assert r.status == 502, await r.text()
                    assert json.loads(await r.read())["errors"][0]["code"] == "UNKNOWN"
                assert meta.tag_list("central.example", name) is None
            # Ignored n: cut at limits.tag_list_tags, the rest a page away through us.
            async with s.get(f"{edge.url}/v2/ignores-n/tags/list") as r:
                doc1 = await r.json()
                link = r.headers["Link"]
            assert len(doc1["tags"]) == 10_000 and doc1["tags"][-1] == "t009999"
            assert link == '</v2/ignores-n/tags/list?n=10000&last=t009999>; rel="next"'
            assert tu.queries[-1]["n"] == "10000"
            async with s.get(f"{edge.url}{link[1:].split('>')[0]}") as r:
                doc2 = await r.json()
            assert doc2["tags"][0] == "t010000" and len(doc2["tags"]) == 10_000
            # The client's n and last reach the upstream; its absolute Link does not
            # reach the client.
            async with s.get(f"{edge.url}/v2/paged/tags/list", params={"n": "5", "last": "t000100",
                                                                       "ns": "central.example"}) as r:
                doc3 = await r.json()
                link = r.headers["Link"]
            assert tu.queries[-1] == {"n": "5", "last": "t000100"}
            assert doc3["tags"] == [f"t{i:06d}" for i in range(101, 106)]
            assert link == '</v2/paged/tags/list?n=5&last=t000105&ns=central.example>; rel="next"'
            assert "elsewhere" not in link
            # An upstream that pages by a token of its own: its query, pointed at us.
            async with s.get(f"{edge.url}/v2/tokened/tags/list", params={"n": "7"}) as r:
                link = r.headers["Link"]
            assert link == '</v2/tokened/tags/list?n=7&next_page=0x1>; rel="next"'
            async with s.get(f"{edge.url}{link[1:].split('>')[0]}") as r:
                assert (await r.json())["tags"] == [f"t{i:06d}" for i in range(7, 14)]
            assert tu.queries[-1] == {"n": "7", "next_page": "0x1"}
            # n=0 answers nothing, and does not become the list kept for offline.
            async with s.get(f"{edge.url}/v2/paged/tags/list", params={"n": "0"}) as r:
                assert (await r.json())["tags"] == []
            assert meta.tag_list("central.example", "paged") is None
            # A client's n over the cap is the cap, and a bad n is no n.
            for n in ("50000", "abc", "\u0661"):
                async with s.get(f"{edge.url}/v2/paged/tags/list", params={"n": n}) as r:
                    assert r.status == 200 and len((await r.json())["tags"]) == 10_000
                assert tu.queries[-1]["n"] == "10000"


async def test_oversized_tag_lists_do_not_grow_the_process(tmp_path):
    """Six 39 MB tag lists (as measured before the cap: RSS 54 -> 289 MB)."""
    tu = TagUpstream()
    async with HttpServer([web.get("/v2/{name:.+}/tags/list", tu.tags)]) as up:
        doc = make_config(tmp_path / "data", {"central.example": up.url}, default="central.example")
        edge = EdgeProcess(tmp_path, doc)
        await asyncio.to_thread(edge.start)
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(f"{edge.url}/v2/") as r:
                    assert r.status == 200
                before = _rss_kib(edge.proc.pid)
                tu.sent = 0
                for i in range(6):
                    async with s.get(f"{edge.url}/v2/huge{i}/tags/list") as r:
                        assert r.status == 502
                after = _rss_kib(edge.proc.pid)
        finally:
            await asyncio.to_thread(edge.stop)
    grew = (after - before) / 1024
    print(f"\nsix 39 MB tag lists: RSS {before / 1024:.0f} -> {after / 1024:.0f} MiB, "
          f"upstream got {tu.sent / MiB:.1f} MiB out")
    assert grew < 16, (before, after)


def test_redirect_rules():
    up = URL("https://registry.example:443/")
    rule = dict(upstream=up, upstream_near=frozenset(), listen=("0.0.0.0", 5000),
                same_host_only=False)
    a = ipaddress.ip_address
    cdn = URL("https://cdn.example/blob")
    assert refusal(cdn, [a("203.0.113.7")], **rule) is None
    assert refusal(cdn, [a("10.1.2.3")], **rule) is None              # an object store on the LAN
    for bad in ("127.0.0.1", "::1", "169.254.169.254", "fe80::1", "0.0.0.0", "224.0.0.251",
                "::ffff:127.0.0.1", "fd00:ec2::254", "100.100.100.200"):
        assert refusal(cdn, [a(bad)], **rule), bad
    assert refusal(cdn, [a("203.0.113.7"), a("127.0.0.1")], **rule)   # any address of the name
    assert refusal(URL("ftp://x/"), [], **rule)
    # The upstream on loopback itself (a registry on the same box): loopback is fine,
    # but never this cache's own listener.
    near_rule = {**rule, "upstream_near": frozenset({"loopback"}), "listen": ("127.0.0.1", 5000)}
    assert refusal(URL("http://127.0.0.1:9000/b"), [a("127.0.0.1")], **near_rule) is None
    # ... and link-local (a metadata service) stays refused: only what the upstream is on.
    assert "link-local" in refusal(cdn, [a("169.254.169.254")], **near_rule)
    assert "own listener" in refusal(URL("http://127.0.0.1:5000/b"), [a("127.0.0.1")], **near_rule)
    every = {**near_rule, "listen": ("0.0.0.0", 5000)}
    assert "own listener" in refusal(URL("http://127.0.0.2:5000/b"), [a("127.0.0.2")], **every)
    # Manifests and tag lists: the upstream's host only.
    same = {**rule, "same_host_only": True}
    assert refusal(URL("https://registry.example/v2/x/manifests/y"), [a("203.0.113.7")], **same) is None
    assert "another host" in refusal(cdn, [a("203.0.113.7")], **same)


async def test_an_upstream_cannot_redirect_to_the_cache_itself(tmp_path):
    img = make_image(402, layers=1, layer_size=4096)
    cached = make_image(403, layers=1, layer_size=4096)
    edge_port = free_port()
    here = f"http://127.0.0.1:{edge_port}"

    async def manifest(request: web.Request) -> web.Response:
        # The manifest of an image the cache holds from elsewhere: served by the cache
        # itself, it would verify against its own digest.
        ref = request.match_info["ref"]
        if ref == "to-self":
            raise web.HTTPFound(f"{here}/v2/other/app/manifests/{cached.manifest_blob().digest}?ns=other.example")
        raise web.HTTPFound(f"{cdn.url}/m")                 # another host, even on loopback

    async def blob(request: web.Request) -> web.Response:
        d = request.match_info["digest"]
        if d == img.layers[0].digest:
            raise web.HTTPTemporaryRedirect(f"{cdn.url}/b/{d}")   # a CDN: fine
        raise web.HTTPTemporaryRedirect(f"{here}/v2/other/app/blobs/{cached.layers[0].digest}?ns=other.example")

    async def cdn_blob(request: web.Request) -> web.Response:
        return web.Response(body=img.layers[0].data)

    async with FaultyUpstream({"other/app:v1": cached}) as other, \
            HttpServer([web.get("/b/{d}", cdn_blob), web.get("/m", cdn_blob)]) as cdn, \
            HttpServer([web.route("*", "/v2/demo/app/manifests/{ref}", manifest),
                        web.route("*", "/v2/demo/app/blobs/{digest}", blob)]) as up:
        doc = make_config(tmp_path / "data", {"central.example": up.url, "other.example": other.url},
                          port=edge_port, default="central.example")
        async with EdgeServer(doc) as edge, aiohttp.ClientSession() as s:
            # The cache holds `cached` under other.example.
            for path in ("/v2/other/app/manifests/v1?ns=other.example",
                         f"/v2/other/app/blobs/{cached.layers[0].digest}?ns=other.example"):
                async with s.get(edge.url + path) as r:
                    assert r.status == 200
            for path in ("/v2/demo/app/manifests/to-self", "/v2/demo/app/manifests/v1",
                         f"/v2/demo/app/manifests/{cached.manifest_blob().digest}",
                         f"/v2/demo/app/blobs/{cached.layers[0].digest}"):
                async with s.get(edge.url + path) as r:
                    # Refused (502), or not vouched for (404): never the cache's own answer.
                    assert r.status in (404, 502), (path, r.status, await r.text())
            async with s.get(f"{edge.url}/v2/demo/app/blobs/{img.layers[0].digest}") as r:
                assert r.status == 200 and await r.read() == img.layers[0].data
            assert ("GET", f"/b/{img.layers[0].digest}", None) in cdn.seen
            assert not any(p == "/m" for _, p, _ in cdn.seen)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
async def guarded(tmp_path):
    """A cache with a cost-12 htpasswd user (as `htpasswd -B -C 12` makes) and one
    whose password is longer than bcrypt reads (hashed, as htpasswd does, on its
    first 72 bytes)."""
    long_pw = "L" * 100
    lines = [f"alice:{bcrypt.hashpw(b'right-password', bcrypt.gensalt(12)).decode()}",
             f"carol:{bcrypt.hashpw(long_pw[:72].encode(), bcrypt.gensalt(4)).decode()}"]
    (tmp_path / "htpasswd").write_text("\n".join(lines) + "\n")
    img = make_image(404, layers=3, layer_size=256 * 1024)
    async with FaultyUpstream({"demo/app:v1": img}) as up:
        doc = make_config(tmp_path / "data", {"central.example": up.url}, default="central.example",
                          access={"htpasswd": str(tmp_path / "htpasswd")})
        async with EdgeServer(doc) as edge:
            yield edge, img, long_pw


async def test_a_wrong_password_flood_does_not_hold_up_a_legitimate_cold_pull(guarded):
    edge, img, _ = guarded
    # The flood from a process of its own (another machine on the LAN), 64 at a time.
    flood = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.flood", f"{edge.url}/v2/demo/app/manifests/v1",
        "alice", "64", "4", stdout=asyncio.subprocess.PIPE)
    assert flood.stdout is not None
    assert (await flood.stdout.readline()).strip() == b"started"
    legit = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)),
                                  headers={"Authorization": _basic("alice", "right-password")})
    async with legit:
        await asyncio.sleep(1.0)                    # the flood is in full swing
        t0 = time.monotonic()
        async with legit.get(f"{edge.url}/v2/demo/app/manifests/v1") as r:
            assert r.status == 200
            manifest = await r.json()
        first = time.monotonic() - t0
        for d in [manifest["config"]["digest"], *(l["digest"] for l in manifest["layers"])]:
            async with legit.get(f"{edge.url}/v2/demo/app/blobs/{d}") as r:
                assert r.status == 200
                await r.read()
        took = time.monotonic() - t0
    out, _ = await flood.communicate()
    answers = {int(k): v for k, v in json.loads(out.decode().strip().splitlines()[-1]).items()}
    checks = edge.services.access.passwords
    print(f"\nwrong-password flood ({sum(answers.values())} requests: {answers}): "
          f"legitimate cold pull {took:.2f} s (its first answer {first:.2f} s), "
          f"{checks.hashed} bcrypt checks run")
    assert took <= 2.0
    assert set(answers) <= {401, 429} and answers.get(429, 0) > 0


async def test_an_unknown_user_costs_what_a_wrong_password_costs(guarded):
    edge, _, _ = guarded

    async def timed(s, user: str, i: int) -> float:
        t0 = time.monotonic()
        async with s.get(f"{edge.url}/v2/", headers={"Authorization": _basic(user, f"pw{i}")}) as r:
            assert r.status == 401
        return time.monotonic() - t0

    async with aiohttp.ClientSession() as s:
        known = statistics.median([await timed(s, "alice", i) for i in range(5)])
        unknown = statistics.median([await timed(s, "mallory", i) for i in range(5)])
    print(f"\nwrong password for alice {known * 1000:.0f} ms, unknown user {unknown * 1000:.0f} ms")
    assert 0.6 < unknown / known < 1.6, (known, unknown)


@pytest.mark.parametrize("length", [73, 100, 1000, 6000])
async def test_passwords_of_any_length_get_an_answer_never_a_500(guarded, length):
    edge, _, long_pw = guarded
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{edge.url}/v2/", headers={"Authorization": _basic("alice", "x" * length)}) as r:
            assert r.status == 401 and (await r.json())["errors"][0]["code"] == "UNAUTHORIZED"
        # The long password htpasswd hashed on its first 72 bytes works, as with htpasswd.
        async with s.get(f"{edge.url}/v2/", headers={"Authorization": _basic("carol", long_pw)}) as r:
            assert r.status == 200


async def test_slowloris_sockets_are_closed_and_idle_ones_too(tmp_path):
    img = make_image(405, layers=1, layer_size=1024)
    async with FaultyUpstream({"demo/app:v1": img}) as up:
        doc = make_config(tmp_path / "data", {"central.example": up.url}, default="central.example",
                          server={"header_timeout": "1s", "idle_timeout": "2s"})
        async with EdgeServer(doc) as edge:
            port = edge.config.listen_port
            conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(400)]

            async def drip(w: asyncio.StreamWriter) -> None:
                w.write(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
                for i in range(6):
                    await asyncio.sleep(0.5)
                    if w.is_closing():
                        return
                    w.write(b"X-%d: y\r\n" % i)

            t0 = time.monotonic()
            drippers = [asyncio.create_task(drip(w)) for _, w in conns]
            # Meanwhile a client that sends whole requests is served.
            async with aiohttp.ClientSession() as s:
                async with s.get(f"{edge.url}/v2/") as r:
                    assert r.status == 200
            closed_at = []
            for reader, _ in conns:
                try:
                    data = await asyncio.wait_for(reader.read(), 5.0)
                except ConnectionError:
                    data = b""
                assert data == b""                          # closed without an answer
                closed_at.append(time.monotonic() - t0)
            await asyncio.gather(*drippers, return_exceptions=True)
            for _, w in conns:
                w.close()
            # An idle keep-alive connection goes after idle_timeout.
            r2, w2 = await asyncio.open_connection("127.0.0.1", port)
            w2.write(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await r2.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            await r2.readexactly(2)                         # {}
            t1 = time.monotonic()
            assert await asyncio.wait_for(r2.read(), 5.0) == b""
            idle = time.monotonic() - t1
            w2.close()
    print(f"\n400 slowloris sockets closed {min(closed_at):.1f}-{max(closed_at):.1f} s after "
          f"connecting (header_timeout 1 s); idle keep-alive closed after {idle:.1f} s (2 s)")
    assert max(closed_at) < 2.5 and 1.5 < idle < 3.5


async def test_an_accept_flood_makes_one_upstream_request(tmp_path):
    img = make_image(406, layers=1, layer_size=1024)
    async with FaultyUpstream({"demo/app:v1": img}) as up:
        doc = make_config(tmp_path / "data", {"central.example": up.url}, default="central.example")
        async with EdgeServer(doc) as edge, aiohttp.ClientSession() as s:
            async with s.get(f"{edge.url}/v2/demo/app/manifests/v1") as r:
                assert r.status == 200
            up.reset_counts()
            sem = asyncio.Semaphore(50)

            async def one(i: int) -> int:
                accept = (f"application/x-junk-{i}, application/vnd.oci.image.manifest.v1+json;q=0.{i % 9}, "
                          f"*/*;q=0.{i % 7}" if i % 2 else
                          f"application/vnd.oci.image.manifest.v1+json, application/x-other-{i}")
                async with sem, s.get(f"{edge.url}/v2/demo/app/manifests/v1",
                                      headers={"Accept": accept}) as r:
                    await r.read()
                    return r.status
            statuses = await asyncio.gather(*(one(i) for i in range(2000)))
            records = edge.services.manifests.meta.tags(("central.example", "demo/app", "v1"))
    print(f"\n2000 distinct Accept lists: {up.count('HEAD', '.*')} upstream HEADs, "
          f"{up.count('GET', '.*')} GETs, {len(records)} tag records")
    assert set(statuses) == {200}
    assert up.count("HEAD", ".*") <= 2 and up.count("GET", ".*") == 0
    assert len(records) <= 3


async def test_a_client_gone_before_the_headers_is_one_log_line(tmp_path, caplog):
    img = make_image(407, layers=1, layer_size=64 * 1024)
    layer = img.layers[0]
    async with FaultyUpstream({"demo/app:v1": img}) as up:
        up.fault("slow", digest=layer.digest, delay=1.0, rate=1 << 20)
        doc = make_config(tmp_path / "data", {"central.example": up.url}, default="central.example")
        async with EdgeServer(doc) as edge:
            with caplog.at_level("DEBUG"):
                for path in (f"/v2/demo/app/blobs/{layer.digest}", "/v2/demo/app/manifests/v1"):
                    r, w = await asyncio.open_connection("127.0.0.1", edge.config.listen_port)
                    w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                    await w.drain()
                    await asyncio.sleep(0.3)
                    w.close()                        # gone while the cache waits for the upstream
                    await asyncio.sleep(1.5)         # the answer would be ready now
                assert await edge.stored(layer.digest)
    tracebacks = [r for r in caplog.records if r.exc_info and r.levelno >= logging.WARNING]
    assert not tracebacks, [r.getMessage() for r in tracebacks]
    gone = [r for r in caplog.records if "client gone" in r.getMessage()]
    assert len(gone) <= 2


def _token_len() -> int:
    t = "0" * 32                                # FaultyUpstream's tokens: 32 hex digits
    return len(json.dumps({"token": t, "access_token": t, "expires_in": 300}))


@pytest.mark.parametrize("over", [0, 1])
async def test_caps_on_what_an_upstream_sends_hold_at_and_past_the_limit(tmp_path, over):
    """At the limit: served. One byte (or tag) past it: refused, nothing kept."""
    img = make_image(408, layers=1, layer_size=1024)
    manifest = img.manifest_blob().data
    tag_list = json.dumps({"name": "demo/app", "tags": ["v1"]}).encode()
    async with FaultyUpstream({"demo/app:v1": img}, auth=True) as up:
        for what, limits, path in (
                ("manifest", {"manifest_bytes": len(manifest) - over}, "/v2/demo/app/manifests/v1"),
                ("tag list", {"tag_list_bytes": len(tag_list) - over}, "/v2/demo/app/tags/list"),
                ("token", {"token_bytes": _token_len() - over}, "/v2/demo/app/manifests/v1")):
            data = tmp_path / f"data-{what.replace(' ', '-')}"
            doc = make_config(data, {"central.example": up.url}, default="central.example",
                              limits=limits)
            async with EdgeServer(doc) as edge, aiohttp.ClientSession() as s:
                async with s.get(edge.url + path) as r:
                    body = await r.read()
                    if over:
                        assert r.status == 502, (what, r.status, body)
                    else:
                        assert r.status == 200, (what, r.status, body)
                kept = edge.services.manifests.meta
                if over and what == "manifest":
                    assert kept.manifest(img.manifest_blob().digest) is None
                if over and what == "tag list":
                    assert kept.tag_list("central.example", "demo/app") is None


async def test_a_header_is_hashed_once_however_often_it_comes(guarded):
    edge, _, _ = guarded
    checks = edge.services.access.passwords
    before = checks.hashed

    async def ask(password: str) -> int:
        async with s.get(f"{edge.url}/v2/", headers={"Authorization": _basic("alice", password)}) as r:
            return r.status
    async with aiohttp.ClientSession() as s:
        # 20 at once with the right password (a client's parallel first requests) and
        # then 3 more of a wrong one, one after another (refused from memory, a second late).
        assert await asyncio.gather(*(ask("right-password") for _ in range(20))) == [200] * 20
        t0 = time.monotonic()
        assert [await ask("nope") for _ in range(3)] == [401] * 3
        took = time.monotonic() - t0
    assert checks.hashed - before == 2
    assert took >= 2.0                  # the repeats waited out the tarpit


async def test_a_redirect_is_checked_again_when_connecting(tmp_path):
    """DNS rebinding: a name that passed the check, then answers with a refused address,
    is stopped by the connector's resolver."""
    from edgecache.config import BreakerConfig, Timeouts, UpstreamConfig
    from edgecache.upstream.client import UpstreamClient
    from edgecache.upstream.redirects import AddressRefused, GuardedResolver
    async def rule(addr, port):
        return "refused" if addr.is_loopback else None
    guarded = GuardedResolver("registry.example", rule)
    with pytest.raises(AddressRefused):
        await guarded.resolve("localhost", 80)                 # another name, to loopback
    await guarded.close()
    own = GuardedResolver("localhost", rule)
    assert await own.resolve("localhost", 80)                  # the upstream's own name
    await own.close()
    # And through a client: a redirect to a name the check let through but the connect
    # resolves to loopback is a refused redirect, not an unreachable upstream.
    client = UpstreamClient(UpstreamConfig("u.example", "http://127.0.0.1:1"), Timeouts(),
                            BreakerConfig())
    await client.start()
    try:
        err = client.translate(aiohttp.ClientConnectorDNSError(
            aiohttp.client_reqrep.ConnectionKey("h", 80, False, True, None, None, None),
            AddressRefused("h resolves to no address a redirect may go to")))
        assert err.kind == "bad_response" and "redirect refused" in str(err)
    finally:
        await client.close()


async def test_a_client_gone_while_its_answer_waits_for_verification_lets_the_fill_go(tmp_path):
    """A chunked upstream (no length): the answer waits for the whole blob; a client
    that leaves meanwhile must not keep the fill alive."""
    img = make_image(409, layers=1, layer_size=2 * MiB)
    layer = img.layers[0]
    async with FaultyUpstream({"demo/app:v1": img}) as up:
        doc = make_config(tmp_path / "data", {"central.example": up.url}, default="central.example",
                          cache={"abandon_after": "1s"}, upstream_timeout={"connect": "2s", "read": "30s"})
        async with EdgeServer(doc) as edge:
            fills = edge.services.blobs.fills
            # Half the body, then silence: the length never known, the answer waiting.
            up.fault("stall", digest=layer.digest, seconds=20, no_length=True)
            r, w = await asyncio.open_connection("127.0.0.1", edge.config.listen_port)
            w.write(f"GET /v2/demo/app/blobs/{layer.digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await w.drain()
            for _ in range(100):
                if fills.active():
                    break
                await asyncio.sleep(0.02)
            assert fills.active()
            w.close()
            for _ in range(150):
                if not fills.active():
                    break
                await asyncio.sleep(0.02)
            assert not fills.active() and fills.abandoned == 1


async def test_sync_work_is_finished_with_nobody_waiting(tmp_path):
    """Pinned and prefetch fills (BlobService.ensure) are kept whoever leaves."""
    from edgecache.pull.routing import Route
    img = make_image(410, layers=1, layer_size=1 * MiB)
    layer = img.layers[0]
    async with FaultyUpstream({"demo/app:v1": img}) as up:
        up.fault("slow", digest=layer.digest, rate=512 * 1024)      # 2 s
        doc = make_config(tmp_path / "data", {"central.example": up.url}, default="central.example",
                          cache={"abandon_after": "0.3s"})
        async with EdgeServer(doc) as edge:
            blobs = edge.services.blobs
            size = await blobs.ensure(Route("central.example", "demo/app"), parse_digest(layer.digest))
            assert size == len(layer.data) and blobs.fills.abandoned == 0
            assert edge.services.store.has(parse_digest(layer.digest))


def test_the_next_page_is_the_link_marked_next_and_never_a_cut_token():
    from edgecache.pull.tags import next_from_link
    both = '</v2/r/tags/list?last=a>; rel="prev", <https://x.example/v2/r/tags/list?last=c&n=5>; rel="next"'
    assert next_from_link(both) == {"last": "c", "n": "5"}
    assert next_from_link('</v2/r/tags/list?last=a>; rel="prev"') is None
    assert next_from_link('</v2/r/other?last=a>; rel="next"') is None
    # A page token too long to pass whole is no next page of theirs (n/last instead).
    assert next_from_link(f'</v2/r/tags/list?n=5&next_page={"x" * 600}>; rel="next"') is None
    many = "&".join(f"p{i}=1" for i in range(9))
    assert next_from_link(f'</v2/r/tags/list?{many}>; rel="next"') is None


async def test_push_methods_are_told_what_is_allowed(tmp_path):
    img = make_image(411, layers=1, layer_size=1024)
    async with FaultyUpstream({"demo/app:v1": img}) as up:
        doc = make_config(tmp_path / "data", {"central.example": up.url}, default="central.example")
        async with EdgeServer(doc) as edge, aiohttp.ClientSession() as s:
            async with s.put(f"{edge.url}/v2/demo/app/manifests/v1", data=b"{}") as r:
                assert r.status == 405 and r.headers["Allow"] == "GET, HEAD"


def test_the_manifest_answer_cache_counts_what_each_answer_holds_not_only_its_body():
    """Many tiny manifests (an attacker's, or a cosign tag's) must not fill memory past
    the cache's budget: each answer costs its body and what holds it."""
    import tracemalloc

    from edgecache.pull.manifests import ManifestService
    budget = 256 * 1024
    svc = ManifestService(None, None, None, None, 60, body_cache_bytes=budget, confirmer=object())
    media_type = "application/vnd.oci.image.manifest.v1+json"
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20_000):
            svc._remember("sha256:" + os.urandom(32).hex(), os.urandom(8), media_type)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0 < len(svc._answers) < 20_000
    assert held <= budget * 1.25, f"{len(svc._answers)} answers hold {held} bytes"
