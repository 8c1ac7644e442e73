"""Building the aiohttp application and owning its resources.

The runtime (store, metadata, upstream sessions, fills, syncer) and the
sendfile pool are opened in one cleanup context and closed in reverse order.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import AsyncIterator

from aiohttp import web

from edgecache.access import Access
from edgecache.config import Config
from edgecache.pull.routing import Router
from edgecache.runtime import open_runtime
from edgecache.server import admin, registry_api
from edgecache.server.accesslog import JsonAccessLogger
from edgecache.server.endpoint import add_catch_all
from edgecache.server.blob_response import BlobSender
from edgecache.server.guard import ACCESS, HOPS, listener_ssl_context
from edgecache.server.oci_errors import DENIAL_LOG, DenialLog
from edgecache.server.protocol import Runner
from edgecache.server.registry_api import SERVICES, Services
from edgecache.server.reload import reload
from edgecache.systemd import Notifier

log = logging.getLogger("edgecache")

CONFIG = web.AppKey("config", Config)
BACKGROUND_SYNC = web.AppKey("background_sync", bool)   # False in tests that drive the syncer


async def _resources(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    access = app[ACCESS] = await asyncio.to_thread(Access, cfg.access, cfg.upstreams)
    try:
        async with open_runtime(cfg, public=lambda u: u not in access.private) as rt:
            sender = BlobSender()
            svc = Services(config=rt.config, store=rt.store, blobs=rt.blobs,
                           manifests=rt.manifests, tags=rt.tags, referrers=rt.referrers,
                           policy=rt.policy, sender=sender,
                           metrics=rt.metrics, syncer=rt.syncer, access=access,
                           importer=rt.importer,
                           router=Router(rt.blobs.upstreams.clients.keys(), cfg.default_upstream),
                           siblings=rt.siblings)
            rt.metrics.add_state(admin.state_collector(svc))
            if rt.siblings is not None and rt.siblings.verifier is not None:
                app[HOPS] = rt.siblings.verifier
            app[SERVICES] = svc
            if app.get(BACKGROUND_SYNC, True):
                rt.syncer.start_background()
            try:
                yield
            finally:
                sender.close()
    finally:
        access.close()


def build_app(cfg: Config) -> web.Application:
    # No middlewares: every route's handler is wrapped in server/endpoint.py instead.
    app = web.Application(client_max_size=1024)
    app[CONFIG] = cfg
    app[DENIAL_LOG] = DenialLog()
    app[admin.STARTED] = time.monotonic()
    app.cleanup_ctx.append(_resources)
    registry_api.add_routes(app)
    admin.add_routes(app)
    add_catch_all(app)
    return app


async def serve(cfg: Config, *, notifier: Notifier | None = None) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads; systemd is told when we are ready."""
    notifier = notifier or Notifier()
    app = build_app(cfg)
    runner = Runner(app, cfg.server, access_log_class=JsonAccessLogger,
                    access_log=logging.getLogger("edgecache.access"),
                    handle_signals=False, shutdown_timeout=10.0)
    await runner.setup()            # opens the store: READY comes after it and the listener
    site = web.TCPSite(runner, cfg.listen_host, cfg.listen_port, backlog=1024,
                       reuse_address=True,
                       ssl_context=listener_ssl_context(cfg.tls) if cfg.tls else None)
    await site.start()
    log.info("edgecache listening on %s:%d (config: %s)", cfg.listen_host, cfg.listen_port,
             cfg.source)
    svc = app[SERVICES]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    reloading: set[asyncio.Task] = set()     # held: a task nobody references may vanish

    async def on_hup() -> None:
        notifier.notify("RELOADING=1")
        try:
            await reload(svc)
        finally:
            notifier.notify("READY=1")

    def hup() -> None:
        task = asyncio.ensure_future(on_hup())
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    loop.add_signal_handler(signal.SIGHUP, hup)
    notifier.notify(f"READY=1\nSTATUS=serving on {cfg.listen_host}:{cfg.listen_port}")
    watchdog = asyncio.create_task(notifier.watchdog(svc.store.healthy))
    try:
        await stop.wait()
        log.info("stopping")
        notifier.notify("STOPPING=1")
    finally:
        for task in (watchdog, *reloading):
            task.cancel()
        await asyncio.gather(watchdog, *reloading, return_exceptions=True)
        await runner.cleanup()
