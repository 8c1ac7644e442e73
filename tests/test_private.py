"""Private stays private: content belongs to the upstream and repository it came from.

Two real Distribution registries, one private (htpasswd) and one public, behind one
cache with client credentials. An anonymous client that knows every digest of the
private image gets none of it through any route; the wrong repository name gets
what Distribution itself answers; a blob held under one repository and asked under
another that has it upstream costs one HEAD and no body; offline, everything
pulled through a route keeps working; links survive kill -9 and an upgrade."""
from __future__ import annotations

import asyncio
import base64
import json
import shutil
import time
import urllib.error
import urllib.request

import aiohttp
import bcrypt
import pytest

from edgecache.reference import parse_digest
from edgecache.store import layout
from tests.conftest import require_binaries
from tests.support.eventually import eventually
from tests.support.edge import EdgeProcess, EdgeServer, make_config
from tests.support.faulty import FaultyUpstream
from tests.support.httpserver import HttpServer
from tests.support.images import make_image, push
from tests.support.registry import Registry

ROBOT = ("robot", "robot-pw")
ALICE = "Basic " + base64.b64encode(b"alice:s3cret").decode()


def _htpasswd(path):
    path.write_text("alice:" + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode() + "\n")
    return path


def cache_doc(tmp_path, priv_url, pub_url, **extra):
    doc = make_config(tmp_path / "data", {}, default="public.example", **extra)
    doc["upstreams"] = {
        "private.example": {"url": priv_url, "username": ROBOT[0], "password": ROBOT[1]},
        "public.example": {"url": pub_url},
    }
    doc["access"] = {"htpasswd": str(_htpasswd(tmp_path / "htpasswd"))}
    return doc


@pytest.fixture
def registries(tmp_path):
    require_binaries("docker-registry")
    priv = Registry(workdir=tmp_path / "priv", users=dict([ROBOT])).start()
    pub = Registry(workdir=tmp_path / "pub").start()
    secret = make_image(101, layers=2, layer_size=64 * 1024)
    public = make_image(102, layers=1, layer_size=32 * 1024)
    other = make_image(103, layers=1, layer_size=16 * 1024)
    push(priv.url, "team/secret", "v1", secret, auth=ROBOT)
    push(pub.url, "demo/app", "v1", public)
    push(pub.url, "other/repo", "v1", other)
    yield priv, pub, secret, public, other
    priv.cleanup()
    pub.cleanup()


async def req(session, url, method="GET", **headers):
    async with session.request(method, url, headers=headers) as r:
        return r.status, r.headers, await r.read()


async def cut_short_ok(session, url, **headers) -> bytes | None:
    """The body, or None when the cache aborted the response (a fill that failed)."""
    try:
        return (await req(session, url, **headers))[2]
    except aiohttp.ClientPayloadError:
        return None


def code_of(body: bytes) -> str | None:
    try:
        return json.loads(body)["errors"][0]["code"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


async def pull_all(session, base, repo, img, query="", auth=None):
    """Manifest by tag and by digest, config and layers; asserts every byte."""
    h = {"Authorization": auth} if auth else {}
    st, _, body = await req(session, f"{base}/v2/{repo}/manifests/v1{query}", **h)
    assert st == 200 and body == img.manifest_blob().data
    st, _, body = await req(session, f"{base}/v2/{repo}/manifests/{img.digest}{query}", **h)
    assert st == 200
    for b in img.blobs:
        st, _, body = await req(session, f"{base}/v2/{repo}/blobs/{b.digest}{query}", **h)
        assert st == 200 and body == b.data, (repo, b.digest, st)


async def test_anonymous_clients_get_no_private_content_through_any_route(tmp_path, registries):
    priv, pub, secret, public, _ = registries
    async with EdgeServer(cache_doc(tmp_path, priv.url, pub.url)) as edge, \
            aiohttp.ClientSession() as s:
        await pull_all(s, edge.url, "team/secret", secret, "?ns=private.example", ALICE)
        assert all(await asyncio.gather(*(edge.stored(b.digest) for b in secret.blobs)))
        pub_before = len(pub.requests())
        digests = [("manifests", secret.digest)] + [("blobs", b.digest) for b in secret.blobs]
        # Every route an anonymous client can name: the public upstream by ?ns=, by
        # path prefix and as the default, under the private repository's name and
        # another; the private upstream itself.
        routes = [("team/secret", "?ns=public.example"), ("public.example/team/secret", ""),
                  ("team/secret", ""), ("demo/app", ""), ("demo/app", "?ns=public.example"),
                  ("team/secret", "?ns=private.example"), ("private.example/team/secret", "")]
        for kind, digest in digests:
            for name, query in routes:
                url = f"{edge.url}/v2/{name}/{kind}/{digest}{query}"
                for method, extra in (("GET", {}), ("HEAD", {}), ("GET", {"Range": "bytes=0-9"})):
                    st, _, body = await req(s, url, method, **extra)
                    private_route = "private" in name or "private" in query
                    assert st == (401 if private_route else 404), (method, url, st)
                    if method == "GET":
                        assert code_of(body) == ("UNAUTHORIZED" if private_route else
                                                 "MANIFEST_UNKNOWN" if kind == "manifests"
                                                 else "BLOB_UNKNOWN")
        # Held only under the private upstream: a HEAD from the public one would be a
        # mere claim, so it is asked for the bytes themselves, says 404, and sends none.
        asked = pub.requests()[pub_before:]
        assert asked and all(status == 404 for _, _, status in asked), asked
        # Authenticated, everything as before; and the public image to anyone.
        await pull_all(s, edge.url, "team/secret", secret, "?ns=private.example", ALICE)
        await pull_all(s, edge.url, "demo/app", public)


async def test_the_wrong_repository_gets_the_answer_distribution_gives(tmp_path, registries):
    priv, pub, secret, public, other = registries
    async with EdgeServer(cache_doc(tmp_path, priv.url, pub.url)) as edge, \
            aiohttp.ClientSession() as s:
        await pull_all(s, edge.url, "demo/app", public)
        # other/repo exists upstream (without these digests); nope/repo does not exist.
        for repo in ("other/repo", "nope/repo"):
            for kind, digest in [("manifests", public.digest)] + [("blobs", b.digest) for b in public.blobs]:
                path = f"/v2/{repo}/{kind}/{digest}"
                for method in ("GET", "HEAD"):
                    theirs = await req(s, pub.url + path, method)
                    ours = await req(s, edge.url + path, method)
                    assert ours[0] == theirs[0] == 404, (method, path, ours[0], theirs[0])
                    if method == "GET":
                        assert code_of(ours[2]) == code_of(theirs[2]), path


async def test_a_blob_held_under_one_repository_costs_a_second_one_head_and_no_body(tmp_path, registries):
    priv, pub, secret, public, _ = registries
    push(pub.url, "demo/copy", "v1", public)             # the same image, another repository
    async with EdgeServer(cache_doc(tmp_path, priv.url, pub.url)) as edge, \
            aiohttp.ClientSession() as s:
        await pull_all(s, edge.url, "demo/app", public)
        assert all(await asyncio.gather(*(edge.stored(b.digest) for b in public.blobs)))
        before = len(pub.requests())
        for b in public.blobs:
            for _ in range(3):
                st, _, body = await req(s, f"{edge.url}/v2/demo/copy/blobs/{b.digest}")
                assert st == 200 and body == b.data
        st, _, body = await req(s, f"{edge.url}/v2/demo/copy/manifests/{public.digest}")
        assert st == 200 and body == public.manifest_blob().data
        asked = pub.requests()[before:]
        # One HEAD per digest (the manifest and each blob), then answered from the links.
        assert sorted(m for m, _, _ in asked) == ["HEAD"] * (1 + len(public.blobs)), asked
        assert pub.bytes_sent(r"/v2/demo/copy/.*") == 0
        st, _, text = await req(s, f"{edge.url}/metrics", Authorization=ALICE)
        assert (f'edgecache_link_checks_total{{answer="yes",upstream="public.example"}} '
                f'{1 + len(public.blobs)}.0') in text.decode()


async def test_a_fill_in_progress_is_joined_only_through_a_route_that_may_have_it(tmp_path):
    """A private blob on its way in (slowly): an anonymous client naming it through the
    public upstream gets 404 at once, and the fill goes on for the client that asked."""
    img = make_image(104, layers=1, layer_size=2 * 1024 * 1024)
    layer = img.layers[0]
    other = make_image(105, layers=1, layer_size=1024)
    async with FaultyUpstream({"team/secret:v1": img}) as priv, \
            FaultyUpstream({"demo/app:v1": other}) as pub:
        priv.fault("slow", digest=layer.digest, rate=1024 * 1024)
        async with EdgeServer(cache_doc(tmp_path, priv.url, pub.url)) as edge, \
                aiohttp.ClientSession() as s:
            owner = asyncio.ensure_future(req(
                s, f"{edge.url}/v2/team/secret/blobs/{layer.digest}?ns=private.example",
                Authorization=ALICE))
            assert await eventually(lambda: edge.services.blobs.fills.get(parse_digest(layer.digest)))
            for path in (f"/v2/team/secret/blobs/{layer.digest}",
                         f"/v2/demo/app/blobs/{layer.digest}?ns=public.example"):
                for method in ("GET", "HEAD"):
                    st, _, _ = await asyncio.wait_for(req(s, edge.url + path, method), 5)
                    assert st == 404, (method, path)
            st, _, body = await owner
            assert st == 200 and body == layer.data
            assert priv.count("GET", rf"/v2/team/secret/blobs/{layer.digest}") == 1


def _get(url, auth=None):
    req_ = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(req_, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read()


def _pull_sync(base, repo, img, query="", auth=None):
    for ref in ("v1", img.digest):
        st, body = _get(f"{base}/v2/{repo}/manifests/{ref}{query}", auth)
        assert (st, body) == (200, img.manifest_blob().data), (repo, ref, st)
    for b in img.blobs:
        st, body = _get(f"{base}/v2/{repo}/blobs/{b.digest}{query}", auth)
        assert (st, body) == (200, b.data), (repo, b.digest, st)


@pytest.mark.parametrize("how", ["kill -9", "upgrade"])
def test_offline_everything_pulled_through_a_route_still_works(tmp_path, registries, how):
    """After kill -9 (links written with the index), or with the links gone as in a
    data_dir of the previous version (derived from tag records): offline, what was
    pulled through a route is served through it, and nothing through another."""
    priv, pub, secret, public, _ = registries
    doc = cache_doc(tmp_path, priv.url, pub.url)
    doc["tag_ttl"] = "0s"
    edge = EdgeProcess(tmp_path, doc).start()
    try:
        _pull_sync(edge.url, "team/secret", secret, "?ns=private.example", ALICE)
        _pull_sync(edge.url, "demo/app", public)
    finally:
        # Tag and manifest records are written within a second (META_FLUSH_INTERVAL);
        # links go with the blob index, at once.
        time.sleep(1.5)
        if how == "kill -9":
            edge.kill9()
        else:
            edge.stop()
    if how == "upgrade":
        shutil.rmtree(layout.links_dir(tmp_path / "data"))
    priv.stop()
    pub.stop()
    edge = EdgeProcess(tmp_path, doc).start()
    try:
        _pull_sync(edge.url, "team/secret", secret, "?ns=private.example", ALICE)
        _pull_sync(edge.url, "demo/app", public)
        # Through the public upstream, content held only under the private one would have
        # to come from the public upstream itself, which is down: the same 503 as for
        # anything not cached (so nobody learns what is held here), never the bytes.
        for b in secret.blobs:
            assert _get(f"{edge.url}/v2/team/secret/blobs/{b.digest}")[0] == 503
            assert _get(f"{edge.url}/v2/demo/app/blobs/{b.digest}", ALICE)[0] == 503
            assert _get(f"{edge.url}/v2/team/secret/blobs/sha256:{'0' * 64}")[0] == 503
        assert _get(f"{edge.url}/v2/demo/app/manifests/{secret.digest}", ALICE)[0] == 503
    finally:
        edge.stop()
    if how == "upgrade":
        assert "repository links derived" in edge.stderr.read_text()


async def test_siblings_give_private_content_only_through_its_route(tmp_path):
    """Two signed siblings: n0 holds a private image. n1, asked by an anonymous client
    through the public upstream, gets nothing from n0 (n0 answers only content linked
    to the route the hop names) nor from the public upstream; an authenticated client
    of n1 gets it from n0 through the private route."""
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"branch-secret-0123456789abcdef")
    img = make_image(106, layers=2, layer_size=256 * 1024)
    decoy = make_image(107, layers=1, layer_size=1024)
    async with FaultyUpstream({"team/secret:v1": img}) as priv, \
            FaultyUpstream({"demo/app:v1": decoy}) as pub:
        docs = []
        for i in range(2):
            (tmp_path / f"n{i}").mkdir()
            d = cache_doc(tmp_path / f"n{i}", priv.url, pub.url)
            d["siblings"] = {"mdns": False, "node_id": f"n{i}", "health_interval": "0.2s",
                             "readmit_after": 1, "timeout": "1s", "secret_file": str(secret_file)}
            docs.append(d)
        for i, d in enumerate(docs):
            d["siblings"]["peers"] = ["http://" + docs[1 - i]["listen"]]
        async with EdgeServer(docs[0]) as n0, EdgeServer(docs[1]) as n1, \
                aiohttp.ClientSession() as s:
            assert await eventually(lambda: n0.services.siblings.live() and n1.services.siblings.live(), 10)
            await pull_all(s, n0.url, "team/secret", img, "?ns=private.example", ALICE)
            assert all(await asyncio.gather(*(n0.stored(b.digest) for b in img.blobs)))
            # n1 holds what it fetched from the upstream as the rendezvous owner; drop it.
            for b in img.blobs:
                await n1.services.store.delete(parse_digest(b.digest))
            priv.reset_counts()
            for name, query in (("team/secret", "?ns=public.example"), ("team/secret", ""),
                                ("demo/app", "")):
                for kind, d in [("manifests", img.digest)] + [("blobs", b.digest) for b in img.blobs]:
                    for method in ("GET", "HEAD"):
                        st, _, _ = await req(s, f"{n1.url}/v2/{name}/{kind}/{d}{query}", method)
                        assert st == 404, (method, name, kind, query)
            assert n0.services.siblings.table.stats.get("n1") is None or \
                n0.services.siblings.table.stats["n1"].bytes_to == 0
            assert not any(n1.services.store.has(parse_digest(b.digest)) for b in img.blobs)
            # Through the private route, n1's authenticated client gets it from n0.
            for b in img.blobs:
                st, _, body = await req(s, f"{n1.url}/v2/team/secret/blobs/{b.digest}?ns=private.example",
                                        Authorization=ALICE)
                assert st == 200 and body == b.data
            # n0 counts what it served once its handler is done, a moment after n1 has it.
            assert await eventually(lambda: n0.services.siblings.table.stats["n1"].bytes_to
                                >= sum(b.size for b in img.layers))
            assert priv.count("GET", r"/v2/.*/blobs/.*") == 0


async def test_an_upstream_lying_in_content_type_cannot_make_another_routes_image_unpullable(tmp_path):
    """The media type comes from the verified body: a hostile upstream's Content-Type
    for a digest it shares with an honest one changes nothing for the honest one."""
    from edgecache.mediatypes import OCI_MANIFEST
    img = make_image(108, layers=1, layer_size=1024)
    async with FaultyUpstream({"demo/app:v1": img}) as liar, \
            FaultyUpstream({"demo/app:v1": img}) as honest:
        liar.fault("content_type", digest=img.digest, content_type="application/x-hostile")
        doc = make_config(tmp_path / "data", {"liar.example": liar.url, "honest.example": honest.url})
        async with EdgeServer(doc) as edge, aiohttp.ClientSession() as s:
            st, h, body = await req(s, f"{edge.url}/v2/demo/app/manifests/{img.digest}?ns=liar.example")
            assert st == 200 and body == img.manifest_blob().data
            assert h["Content-Type"] == OCI_MANIFEST           # the body's own mediaType
            for ns in ("honest.example", "liar.example"):
                st, h, body = await req(s, f"{edge.url}/v2/demo/app/manifests/{img.digest}?ns={ns}",
                                        Accept=OCI_MANIFEST)
                assert st == 200 and h["Content-Type"] == OCI_MANIFEST, ns
            assert liar.count("GET", r"/v2/demo/app/manifests/.*") == 1


async def test_a_request_that_waited_does_not_join_a_private_fill_started_meanwhile(tmp_path):
    """The race a LAN attacker can try: its request through the public upstream waits
    (here: the confirmation asked because an unsigned sibling is about), and meanwhile
    an authenticated client starts the private fill of the same digest. The waiting
    request is decided again before it joins anything: 404, not the private bytes."""
    from tests.support.fakesibling import FakeSibling
    img = make_image(109, layers=1, layer_size=1024 * 1024)
    layer = img.layers[0]
    async with FaultyUpstream({"team/secret:v1": img}) as priv, \
            FaultyUpstream({"demo/app:v1": img}) as pub, FakeSibling("evil", {}) as evil:
        priv.fault("slow", digest=layer.digest, rate=1024 * 1024)
        pub.fault("status", digest=layer.digest, status=404, delay=1.0)   # a slow "no"
        doc = cache_doc(tmp_path, priv.url, pub.url)
        doc["siblings"] = {"mdns": False, "node_id": "n0", "peers": [evil.url],
                           "health_interval": "0.2s", "readmit_after": 1, "timeout": "1s"}
        async with EdgeServer(doc) as edge, aiohttp.ClientSession() as s:
            assert await eventually(lambda: edge.services.siblings.live(), 10)
            attacker = asyncio.ensure_future(
                req(s, f"{edge.url}/v2/demo/app/blobs/{layer.digest}?ns=public.example"))
            await asyncio.sleep(0.3)
            owner = asyncio.ensure_future(req(
                s, f"{edge.url}/v2/team/secret/blobs/{layer.digest}?ns=private.example",
                Authorization=ALICE))
            st, _, body = await attacker
            assert st == 404 and body != layer.data
            st, _, body = await owner
            assert st == 200 and body == layer.data
            assert evil.counts["get"] == 0


class LyingRegistry(HttpServer):
    """A public upstream that says yes to every HEAD (echoing the digest, or pointing
    every tag at `claimed`), answers GETs with 404, except blobs named in `trickle`,
    which it sends half of, slowly, and then breaks off."""

    def __init__(self, claimed: str, trickle: dict[str, bytes] | None = None) -> None:
        from aiohttp import web
        self.claimed, self.trickle = claimed, trickle or {}
        super().__init__([web.get("/v2/", self._base),
                          web.route("*", "/v2/{name:.+}/{kind:manifests|blobs}/{ref}", self._lie)])

    async def _base(self, request):
        from aiohttp import web
        return web.json_response({})

    async def _lie(self, request):
        from aiohttp import web
        ref = request.match_info["ref"]
        digest = ref if ref.startswith("sha256:") else self.claimed
        if request.method == "HEAD":
            return web.Response(headers={"Docker-Content-Digest": digest,
                                         "Content-Type": "application/vnd.oci.image.manifest.v1+json",
                                         "Content-Length": "1000"})
        if ref in self.trickle:
            data = self.trickle[ref]
            resp = web.StreamResponse(headers={"Content-Length": str(len(data))})
            await resp.prepare(request)
            for i in range(0, len(data) // 2, 4096):
                await resp.write(data[i:i + 4096])
                await asyncio.sleep(0.02)
            request.transport.close()
            return resp
        return web.json_response({"errors": [{"code": "BLOB_UNKNOWN", "message": "no"}]}, status=404)


async def test_a_lying_public_upstream_unlocks_nothing(tmp_path):
    """A public upstream (hostile, or impersonated over plain http) that says yes to
    every HEAD and points its tags at whatever digest it likes: content held only under
    the private upstream must come from it in full, which it cannot send."""
    img = make_image(111, layers=2, layer_size=64 * 1024)
    async with FaultyUpstream({"team/secret:v1": img}) as priv, LyingRegistry(img.digest) as liar:
        doc = cache_doc(tmp_path, priv.url, liar.url)
        async with EdgeServer(doc) as edge, aiohttp.ClientSession() as s:
            await pull_all(s, edge.url, "team/secret", img, "?ns=private.example", ALICE)
            for kind, d in [("manifests", img.digest)] + [("blobs", b.digest) for b in img.blobs]:
                for method in ("GET", "HEAD"):
                    st, _, body = await req(s, f"{edge.url}/v2/x/y/{kind}/{d}?ns=public.example", method)
                    if method == "GET":
                        assert st == 404 and body != img.manifest_blob().data, (kind, d)
            st, _, body = await req(s, f"{edge.url}/v2/x/y/manifests/latest?ns=public.example")
            assert st != 200 and img.manifest_blob().data not in body
            # Once more: nothing was linked by the lies.
            for b in img.blobs:
                st, _, _ = await req(s, f"{edge.url}/v2/x/y/blobs/{b.digest}?ns=public.example")
                assert st == 404
    assert any(m == "GET" for m, _, _ in liar.seen)     # it was asked for the bytes themselves


async def test_a_lie_told_while_a_fill_is_under_way_links_nothing(tmp_path):
    """The liar starts a fill of a private layer under one of its repositories (it
    trickles zeros, not having the layer, then breaks off) and, meanwhile, says yes for
    another: that request may
    join the liar's own fill, but no link is made, so once the private upstream has
    brought the layer, the liar's routes still get none of it."""
    img = make_image(112, layers=1, layer_size=256 * 1024)
    layer = img.layers[0]
    async with FaultyUpstream({"team/secret:v1": img}) as priv, \
            LyingRegistry(img.digest, trickle={layer.digest: bytes(len(layer.data))}) as liar:
        doc = cache_doc(tmp_path, priv.url, liar.url)
        async with EdgeServer(doc) as edge, aiohttp.ClientSession() as s:
            first = asyncio.ensure_future(
                cut_short_ok(s, f"{edge.url}/v2/slow/repo/blobs/{layer.digest}?ns=public.example"))
            assert await eventually(lambda: edge.services.blobs.fills.get(parse_digest(layer.digest)))
            body = await cut_short_ok(s, f"{edge.url}/v2/x/y/blobs/{layer.digest}?ns=public.example")
            assert body != layer.data
            assert (await first) != layer.data
            st, _, body = await req(s, f"{edge.url}/v2/team/secret/blobs/{layer.digest}?ns=private.example",
                                    Authorization=ALICE)
            assert st == 200 and body == layer.data
            assert await edge.stored(layer.digest)
            # Held now, but only under the private upstream: through the liar's routes the
            # liar's own bytes are wanted (it trickles and breaks off again), never ours.
            for repo in ("x/y", "slow/repo"):
                body = await cut_short_ok(s, f"{edge.url}/v2/{repo}/blobs/{layer.digest}?ns=public.example")
                assert body != layer.data, repo
            assert edge.services.store.links.owners(layer.digest) == {("private.example", "team/secret")}


def _with_layers(base, layers):
    """base's config with other layers (a private image built on a public base)."""
    from tests.support.images import Image, _canonical
    manifest = _canonical({"schemaVersion": 2, "mediaType": base.media_type,
                           "config": base.config.descriptor(),
                           "layers": [b.descriptor() for b in layers]})
    return Image(base.config, tuple(layers), manifest, base.media_type, base.platform)


async def test_a_public_base_layer_first_pulled_through_a_private_image_costs_two_windows(tmp_path, registries):
    """A private image built on a public base is pulled first: the base layer is held
    under the private upstream only. A public client of the base then gets it from
    disk once the public registry has proved it holds the layer with two 64 KiB
    windows (a HEAD alone would be a mere claim): not the whole layer again."""
    priv, pub, _, _, _ = registries
    base = make_image(113, layers=1, layer_size=1024 * 1024)
    layer = base.layers[0]
    mine = _with_layers(make_image(114, layers=1, layer_size=1024), [layer, make_image(115).layers[0]])
    push(pub.url, "library/base", "v1", base)
    push(priv.url, "team/app", "v1", mine, auth=ROBOT)
    async with EdgeServer(cache_doc(tmp_path, priv.url, pub.url)) as edge, \
            aiohttp.ClientSession() as s:
        await pull_all(s, edge.url, "team/app", mine, "?ns=private.example", ALICE)
        assert await edge.stored(layer.digest)
        before = pub.bytes_sent(rf"/v2/library/base/blobs/{layer.digest}")
        for _ in range(3):
            st, _, body = await req(s, f"{edge.url}/v2/library/base/blobs/{layer.digest}")
            assert st == 200 and body == layer.data
        sent = pub.bytes_sent(rf"/v2/library/base/blobs/{layer.digest}") - before
        assert 0 < sent <= 2 * 64 * 1024, sent              # two windows, then from the links
        assert layer.size > 10 * 64 * 1024


async def test_the_slice_proof_works_with_an_upstream_that_ignores_range(tmp_path):
    base = make_image(116, layers=1, layer_size=512 * 1024)
    layer = base.layers[0]
    mine = _with_layers(make_image(117, layers=1, layer_size=1024), [layer])
    async with FaultyUpstream({"team/app:v1": mine}) as priv, \
            FaultyUpstream({"library/base:v1": base}) as pub:          # no Range support
        async with EdgeServer(cache_doc(tmp_path, priv.url, pub.url)) as edge, \
                aiohttp.ClientSession() as s:
            await pull_all(s, edge.url, "team/app", mine, "?ns=private.example", ALICE)
            assert await edge.stored(layer.digest)
            for _ in range(2):
                st, _, body = await req(s, f"{edge.url}/v2/library/base/blobs/{layer.digest}")
                assert st == 200 and body == layer.data
            assert pub.count("GET", rf"/v2/library/base/blobs/{layer.digest}") == 1, pub.log
            assert edge.services.store.linked(layer.digest, ("public.example", "library/base"))


async def test_an_upstream_that_knows_part_of_a_private_layer_cannot_prove_it_by_retrying(tmp_path):
    """A public upstream with the first half of a private layer (a gzip layer can share
    a prefix with a public one) answers the windows it can and fails the others: asked
    again and again, it is asked the same windows, so it never gets the layer served."""
    from aiohttp import web
    img = make_image(118, layers=1, layer_size=1024 * 1024)
    layer = img.layers[0]
    half = len(layer.data) // 2
    asked = []

    async def blob(request):
        rng = request.headers.get("Range", "")
        asked.append(rng)
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(layer.data))})
        a, _, b = rng.removeprefix("bytes=").partition("-")
        if rng and int(b) < half:
            return web.Response(status=206, body=layer.data[int(a):int(b) + 1], headers={
                "Content-Range": f"bytes {a}-{b}/{len(layer.data)}"})
        return web.json_response({"errors": [{"code": "UNAVAILABLE", "message": "x"}]}, status=503)

    async def base(request):
        return web.json_response({})

    routes = [web.get("/v2/", base), web.route("*", "/v2/{name:.+}/blobs/{ref}", blob)]
    async with HttpServer(routes) as liar:
        async with FaultyUpstream({"team/secret:v1": img}) as priv:
            doc = cache_doc(tmp_path, priv.url, liar.url)
            doc["breaker"] = {"failures": 1000}
            async with EdgeServer(doc) as edge, aiohttp.ClientSession() as s:
                await pull_all(s, edge.url, "team/secret", img, "?ns=private.example", ALICE)
                assert await edge.stored(layer.digest)
                for i in range(8):
                    body = await cut_short_ok(s, f"{edge.url}/v2/r{i}/blobs/{layer.digest}?ns=public.example")
                    assert body != layer.data, i
                windows = {r for r in asked if r}
                assert len(windows) <= 2, windows        # the same windows every time
                assert not edge.services.store.linked(layer.digest, ("public.example", "r0"))
