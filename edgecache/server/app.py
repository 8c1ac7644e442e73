"""Building the aiohttp application and owning its resources.

Everything with a lifecycle (store, metadata, upstream sessions, fills, the
sendfile pool) is opened in one cleanup context and closed in reverse order.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from contextlib import AsyncExitStack
from typing import AsyncIterator, Awaitable, Callable

from aiohttp import web

from edgecache.config import Config
from edgecache.metrics import Metrics
from edgecache.pull.blobs import BlobService
from edgecache.pull.fill import FillRegistry
from edgecache.pull.manifests import ManifestService
from edgecache.pull.tags import TagListService
from edgecache.server import admin, registry_api
from edgecache.server.accesslog import JsonAccessLogger, timing_middleware
from edgecache.server.blob_response import BlobSender
from edgecache.server.oci_errors import oci_error_middleware
from edgecache.server.registry_api import SERVICES, Services
from edgecache.store import layout
from edgecache.store.blobs import BlobStore
from edgecache.store.meta import MetaStore
from edgecache.upstream.client import Upstreams

log = logging.getLogger("edgecache")

CONFIG = web.AppKey("config", Config)
META_FLUSH_INTERVAL = 1.0


async def _flush_meta(meta: MetaStore) -> None:
    while True:
        await asyncio.sleep(META_FLUSH_INTERVAL)
        await asyncio.to_thread(meta.flush)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    async with AsyncExitStack() as stack:
        store = BlobStore(cfg.data_dir, cfg.cache.max_size,
                          high_watermark=cfg.cache.high_watermark,
                          low_watermark=cfg.cache.low_watermark)
        await store.open()
        stack.push_async_callback(store.close)

        meta = MetaStore(layout.meta_dir(cfg.data_dir))
        await asyncio.to_thread(meta.load)
        stack.callback(meta.close)
        flusher = asyncio.create_task(_flush_meta(meta))
        stack.callback(flusher.cancel)

        upstreams = await stack.enter_async_context(
            Upstreams(cfg.upstreams, cfg.upstream_timeout, cfg.breaker))
        metrics = Metrics()
        for name, client in upstreams.clients.items():
            client.on_error = (lambda n: lambda err: metrics.upstream_error(n, err.kind))(name)

        fills = FillRegistry(store)
        stack.push_async_callback(fills.close)
        sender = BlobSender()
        stack.callback(sender.close)

        svc = Services(config=cfg, store=store,
                       blobs=BlobService(store, fills, upstreams, metrics),
                       manifests=ManifestService(store, meta, upstreams, metrics, cfg.tag_ttl),
                       tags=TagListService(meta, upstreams, metrics),
                       sender=sender, metrics=metrics)
        metrics.add_state(admin.state_collector(svc))
        app[SERVICES] = svc
        log.info("store %s: %d blobs, %d bytes of %d budget", cfg.data_dir,
                 len(store.index), store.index.total_bytes, store.max_size)
        yield


def build_app(cfg: Config) -> web.Application:
    app = web.Application(middlewares=[timing_middleware, oci_error_middleware], client_max_size=1024)
    app[CONFIG] = cfg
    app[admin.STARTED] = time.monotonic()
    app.cleanup_ctx.append(_resources)
    registry_api.add_routes(app)
    admin.add_routes(app)
    return app


async def serve(cfg: Config, *, ready: Callable[[], Awaitable[None] | None] | None = None) -> None:
    """Run until SIGTERM or SIGINT."""
    app = build_app(cfg)
    runner = web.AppRunner(app, access_log_class=JsonAccessLogger,
                           access_log=logging.getLogger("edgecache.access"),
                           handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, cfg.listen_host, cfg.listen_port, backlog=1024,
                       reuse_address=True)
    await site.start()
    log.info("edgecache listening on %s:%d (config: %s)", cfg.listen_host, cfg.listen_port,
             cfg.source)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if ready is not None:
            r = ready()
            if asyncio.iscoroutine(r):
                await r
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()
