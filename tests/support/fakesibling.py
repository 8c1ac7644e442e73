"""A sibling that misbehaves on purpose: a real HTTP server speaking the sibling
protocol (health check, probe, blob GET) for blobs it is given, counting requests.

    async with FakeSibling("bad-node", {digest: data}, mode="corrupt") as fake:
        ... peers: [fake.url] ...

mode: "ok" serves the bytes; "corrupt" flips a byte in the middle; "cut" sends half
and closes the connection; "stall" sends half and then goes silent; "trickle" sends
4 KiB every 0.2 s (never silent for long, never getting anywhere).
"""
from __future__ import annotations

import asyncio
from collections import Counter

from aiohttp import web


class FakeSibling:
    def __init__(self, node_id: str, blobs: dict[str, bytes], *, mode: str = "ok",
                 port: int = 0) -> None:
        self.node_id = node_id
        self.blobs = dict(blobs)
        self.tags: dict[str, tuple[str, bytes]] = {}
        self.mode = mode
        self.port = port
        self.counts: Counter[str] = Counter()        # "ping" | "probe" | "get" | "other"
        self.hop_headers: list[dict[str, str]] = []
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> "FakeSibling":
        app = web.Application()
        app.router.add_get("/_edgecache/sibling", self._ping)
        app.router.add_route("*", "/v2/{name:.+}/blobs/{digest}", self._blob)
        app.router.add_get("/v2/{name:.+}/manifests/{ref}", self._manifest)
        app.router.add_route("*", "/{tail:.*}", self._other)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2,
                                     handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "FakeSibling":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _ping(self, request: web.Request) -> web.Response:
        self.counts["ping"] += 1
        return web.json_response({"node_id": self.node_id, "version": "fake"})

    async def _other(self, request: web.Request) -> web.Response:
        self.counts["other"] += 1
        return web.json_response({"errors": [{"code": "NAME_UNKNOWN"}]}, status=404)

    async def _manifest(self, request: web.Request) -> web.Response:
        """Tags: the answer in self.tags (ref -> (digest, body)), unsigned."""
        self.counts["tag"] += 1
        found = self.tags.get(request.match_info["ref"])
        if found is None:
            return web.Response(status=404)
        digest, body = found
        return web.Response(body=body, headers={
            "Docker-Content-Digest": digest, "X-Edgecache-Checked": "1000.000",
            "Content-Type": "application/vnd.oci.image.manifest.v1+json"})

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        self.hop_headers.append({k: v for k, v in request.headers.items() if k.lower().startswith("x-edgecache")})
        digest = request.match_info["digest"]
        data = self.blobs.get(digest)
        if request.method == "HEAD":
            self.counts["probe"] += 1
            if data is None:
                return web.Response(status=404)
            return web.Response(headers={"X-Edgecache-Have": "stored",
                                         "Content-Length": str(len(data))})
        self.counts["get"] += 1
        if data is None:
            return web.Response(status=404)
        if self.mode == "corrupt":
            mid = len(data) // 2
            data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:]
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = len(data)
        await resp.prepare(request)
        half = len(data) // 2
        if self.mode == "trickle":
            for i in range(0, len(data), 4096):
                await resp.write(data[i:i + 4096])
                await asyncio.sleep(0.2)
            await resp.write_eof()
            return resp
        if self.mode in ("cut", "stall"):
            await resp.write(data[:half])
            if self.mode == "stall":
                await self._release.wait()
            assert request.transport is not None
            request.transport.close()          # the sibling "dies" mid-transfer
            return resp
        await resp.write(data)
        await resp.write_eof()
        return resp
