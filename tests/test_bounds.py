"""Bounds: no client or upstream can make the cache grow past its budget, hold
memory, or stall it. Hostile clients and a hostile upstream of the tests' own,
each bound asserted with a number."""
import asyncio
import ipaddress
import json
import os
from pathlib import Path

import aiohttp
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
            assert samples[-1][1] == 0
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
    rule = dict(upstream=up, upstream_near=False, listen=("0.0.0.0", 5000), same_host_only=False)
    a = ipaddress.ip_address
    cdn = URL("https://cdn.example/blob")
    assert refusal(cdn, [a("203.0.113.7")], **rule) is None
    assert refusal(cdn, [a("10.1.2.3")], **rule) is None              # an object store on the LAN
    for bad in ("127.0.0.1", "::1", "169.254.169.254", "fe80::1", "0.0.0.0", "224.0.0.251"):
        assert refusal(cdn, [a(bad)], **rule), bad
    assert refusal(cdn, [a("203.0.113.7"), a("127.0.0.1")], **rule)   # any address of the name
    assert refusal(URL("ftp://x/"), [], **rule)
    # The upstream on loopback itself (a registry on the same box): loopback is fine,
    # but never this cache's own listener.
    near_rule = {**rule, "upstream_near": True, "listen": ("127.0.0.1", 5000)}
    assert refusal(URL("http://127.0.0.1:9000/b"), [a("127.0.0.1")], **near_rule) is None
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
            for path in (f"/v2/other/app/manifests/v1?ns=other.example",
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
