"""The HTTP connection: aiohttp's, with a deadline on the request head.

aiohttp closes an idle keep-alive connection after keepalive_timeout, but a client
that sends a request head a byte at a time (slowloris) keeps its socket and its
memory as long as it likes. Here a head must arrive whole within header_timeout of
the connection opening, or of its first byte on a kept-alive connection.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from edgecache.config import ServerConfig

log = logging.getLogger("edgecache.server")


class _HeadDeadline(RequestHandler):
    """`_head_since`: when the head being received began (None: not receiving one).
    One timer at a time, left to fire rather than cancelled per request: on a busy
    keep-alive connection a head costs two assignments, not a timer."""

    __slots__ = ("_head_since", "_head_timer", "lost", "door")
    head_timeout = 10.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_since: float | None = None
        # Done when the client's connection is gone (handlers that wait without writing
        # learn it here: aiohttp does not cancel them).
        self.lost: asyncio.Future[None] = self._loop.create_future()
        # What the door (server/guard.py) checked of this connection, once.
        self.door: tuple[int, str | None] | None = None
        super().connection_made(transport)
        self._head_started()

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._head_since = None          # a whole head (or a malformed one: answered)
        elif data and self._head_since is None and not self._request_in_progress:
            self._head_started()             # the first bytes of the next head

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if not self.lost.done():
            self.lost.set_result(None)
        super().connection_lost(exc)

    def _head_started(self) -> None:
        self._head_since = self._loop.time()
        if self._head_timer is None:
            self._head_timer = self._loop.call_later(self.head_timeout, self._check_head)

    def _check_head(self) -> None:
        self._head_timer = None
        since = self._head_since
        if since is None or self.transport is None:
            return
        left = since + self.head_timeout - self._loop.time()
        if left > 0:                          # a later head, begun since the timer was set
            self._head_timer = self._loop.call_later(left, self._check_head)
            return
        if not self._request_in_progress:
            peer = self.transport.get_extra_info("peername")
            log.info("closed a connection from %s: no whole request head in %.0f s",
                     peer[0] if peer else "?", self.head_timeout)
            self.force_close()


def client_lost(request: web.BaseRequest) -> "asyncio.Future[None] | None":
    """Done once the request's client has gone (None: not one of our connections)."""
    return getattr(request.protocol, "lost", None)


class _Server(web.Server):
    handler_class: type[RequestHandler] = RequestHandler

    def __call__(self) -> RequestHandler:
        return self.handler_class(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """An AppRunner whose connections have the server config's timeouts."""

    def __init__(self, app: web.Application, cfg: ServerConfig, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=cfg.idle_timeout, **kwargs)
        self._head_timeout = cfg.header_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server            # the same object, making our connections
        server.handler_class = type("HeadDeadline", (_HeadDeadline,),
                                    {"__slots__": (), "head_timeout": self._head_timeout})
        return server
