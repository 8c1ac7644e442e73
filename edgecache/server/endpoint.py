"""What every request gets, in one frame around its route's handler: its Outcome for
the access log (with its start time), the door (guard.admit: network, identity,
sibling hops, operator paths), and domain errors turned into OCI bodies
(oci_errors.answer).

A wrapper per route, not aiohttp middlewares: each middleware is another coroutine
and partial per request, and aiohttp adds one of its own; on a cached manifest the
chain of three cost a tenth of the request. Paths no route takes end in `no_route`,
so they are OCI answers too.
"""
from __future__ import annotations

import time
from functools import wraps
from typing import Awaitable, Callable

from aiohttp import web

from edgecache.errors import NoSuchEndpoint, Unsupported
from edgecache.server.accesslog import OUTCOME, Outcome
from edgecache.server.guard import BY_PATH, PULL, admit
from edgecache.server.oci_errors import answer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def endpoint(handler: Handler, door: str = PULL) -> Handler:
    """`door`: what guard.admit asks of the client beyond its network and identity."""
    @wraps(handler)
    async def serve(request: web.Request) -> web.StreamResponse:
        request[OUTCOME] = Outcome(time.perf_counter())
        try:
            await admit(request, door)
            return await handler(request)
        except Exception as exc:   # noqa: BLE001 - the translation boundary
            return answer(request, exc)
    return serve


async def no_route(request: web.Request) -> web.StreamResponse:
    """A path no route has: 405 where another method would have been answered, else 404."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        match, methods = await resource.resolve(request)
        if match is None:                  # (the one that matches is this catch-all)
            allowed |= methods
    if allowed:
        raise Unsupported("method not supported by this mirror", allow=", ".join(sorted(allowed)))
    raise NoSuchEndpoint("no such endpoint")


def add_catch_all(app: web.Application) -> None:
    """Last, after every other route."""
    app.router.add_route("*", "/{tail:.*}", endpoint(no_route, BY_PATH))
