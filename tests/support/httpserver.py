"""A small HTTP server of a test's own on loopback: the routes it is given, and a
record of every request (method, path, Authorization), for hostile upstreams,
token services and CDNs written in a few lines."""
from __future__ import annotations

import ssl

from aiohttp import web

from .ports import free_port


class HttpServer:
    def __init__(self, routes: list[web.RouteDef], host: str = "127.0.0.1",
                 ssl_ctx: ssl.SSLContext | None = None) -> None:
        self.host, self.port = host, free_port()
        self.ssl = ssl_ctx
        self.seen: list[tuple[str, str, str | None]] = []    # method, path, Authorization
        self.app = web.Application(middlewares=[self._record])
        self.app.add_routes(routes)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://{self.host}:{self.port}"

    @web.middleware
    async def _record(self, request: web.Request, handler):
        self.seen.append((request.method, request.path, request.headers.get("Authorization")))
        return await handler(request)

    async def __aenter__(self) -> "HttpServer":
        self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl).start()
        return self

    async def stop(self) -> None:
        """Gone from the network (once; the context's exit then does nothing)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
