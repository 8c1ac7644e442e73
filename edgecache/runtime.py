"""Everything with a lifecycle, built from the config and closed in reverse order:
store, metadata, upstream sessions, fills, the pull services, siblings, the syncer.

The HTTP server runs on one; `edgecache sync` without a daemon runs on another.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from edgecache.config import Config
from edgecache.metrics import Metrics
from edgecache.pull.blobs import BlobService
from edgecache.pull.fills import FillRegistry
from edgecache.seed.importer import Importer
from edgecache.pull.links import Confirmer
from edgecache.pull.manifests import ManifestService
from edgecache.policy.rules import Policy
from edgecache.policy.signatures import SignatureFinder
from edgecache.pull.referrers import ReferrersService
from edgecache.pull.tags import TagListService
from edgecache.siblings.service import Siblings, load_node_id
from edgecache.store import layout
from edgecache.store.blobs import BlobStore
from edgecache.store.meta import MetaStore
from edgecache.sync.state import state_path
from edgecache.sync.syncer import Syncer
from edgecache.upgrade import derive_links
from edgecache.upstream.client import Upstreams

log = logging.getLogger("edgecache")

META_FLUSH_INTERVAL = 1.0


@dataclass
class Runtime:
    config: Config
    store: BlobStore
    meta: MetaStore
    upstreams: Upstreams
    fills: FillRegistry
    blobs: BlobService
    manifests: ManifestService
    tags: TagListService
    referrers: ReferrersService
    policy: Policy
    metrics: Metrics
    syncer: Syncer
    importer: Importer
    siblings: Siblings | None = None


def run_loop(coro):
    """Run a command's coroutine on uvloop: the server's loop everywhere, not only in
    `serve`."""
    import uvloop
    return uvloop.run(coro)


@asynccontextmanager
async def open_store(cfg: Config) -> AsyncIterator[BlobStore]:
    """The store alone (for gc and verify without a daemon), opened and closed."""
    store = BlobStore(cfg.data_dir, cfg.cache.max_size, high_watermark=cfg.cache.high_watermark,
                      low_watermark=cfg.cache.low_watermark,
                      evict_interval=cfg.cache.evict_interval)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def _scrub(store: BlobStore, interval: float, rate: int) -> None:
    """Re-hash every blob now and then: bit rot on cheap disks is found before a
    client is sent it; bad blobs are quarantined and fetched again when asked for."""
    while True:
        await asyncio.sleep(interval)
        try:
            report = await store.verify(rate=rate)
        except Exception as e:   # noqa: BLE001 - the next scrub tries again
            log.warning("scrub stopped: %s", e)
            continue
        log.info("scrub: %d blobs, %d bytes checked, %d bad", report.checked, report.bytes,
                 len(report.bad))


async def _flush_meta(meta: MetaStore, store: BlobStore) -> None:
    while True:
        await asyncio.sleep(META_FLUSH_INTERVAL)
        if meta.needs_prune(len(store.index)):
            n = meta.prune(store.has)
            log.info("metadata: %d records of manifests no longer held dropped", n)
        try:
            await asyncio.to_thread(meta.flush)
        except Exception as e:   # noqa: BLE001 - kept queued; tried again next time
            meta.flush_errors += 1
            meta.last_flush_error = f"{type(e).__name__}: {e}"
            # Once a minute at most: a full disk fails every second.
            if meta.flush_errors == 1 or meta.flush_errors % 60 == 0:
                log.warning("metadata not written (%d failed flushes, retried every %.0f s): %s",
                            meta.flush_errors, META_FLUSH_INTERVAL, e)


def _own(stack: AsyncExitStack, task: asyncio.Task) -> None:
    """A background task ends with the runtime: cancelled, and awaited (so it is gone,
    and whatever it raised is seen, before what it uses is closed)."""
    async def stop() -> None:
        task.cancel()
        for result in await asyncio.gather(task, return_exceptions=True):
            if isinstance(result, Exception):
                log.warning("%s ended with %r", task.get_name(), result)
    stack.push_async_callback(stop)


class open_runtime:
    """`async with open_runtime(cfg) as rt:` opens everything, closes it on exit.

    `siblings=False` for a one-off process (`edgecache sync` without a daemon): it
    neither advertises itself nor asks the siblings. `public` says which upstreams are
    public now (after a reload too); default: as configured.
    """

    def __init__(self, cfg: Config, *, siblings: bool = True,
                 public: Callable[[str], bool] | None = None) -> None:
        self.cfg = cfg
        self.public = public       # which upstreams are public now (the server's access rules)
        self.with_siblings = siblings and cfg.siblings.enabled
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Runtime:
        cfg, stack = self.cfg, self._stack
        try:
            store = await stack.enter_async_context(open_store(cfg))

            meta = MetaStore(layout.meta_dir(cfg.data_dir),
                             tag_lists_bytes=cfg.limits.tag_lists_kept_bytes)
            await asyncio.to_thread(meta.load)
            stack.callback(meta.close)
            _own(stack, asyncio.create_task(_flush_meta(meta, store), name="metadata flusher"))

            upstreams = await stack.enter_async_context(
                Upstreams(cfg.upstreams, cfg.upstream_timeout, cfg.breaker, cfg.limits,
                          (cfg.listen_host, cfg.listen_port)))
            metrics = Metrics()
            for name, client in upstreams.clients.items():
                client.on_error = (lambda n: lambda err: metrics.upstream_error(n, err.kind))(name)

            if cfg.cache.scrub_interval > 0:
                _own(stack, asyncio.create_task(_scrub(store, cfg.cache.scrub_interval,
                                                       cfg.cache.scrub_rate), name="scrub"))

            if store.links.upgraded_from is not None:
                await derive_links(store, meta, state_path(cfg.data_dir), cfg.upstreams)

            fills = FillRegistry(store, abandon_after=cfg.cache.abandon_after,
                                 finish_fraction=cfg.cache.finish_fraction)
            stack.push_async_callback(fills.close)
            siblings = None
            if self.with_siblings:
                node_id = await asyncio.to_thread(load_node_id, cfg.data_dir, cfg.siblings.node_id)
                siblings = Siblings(cfg, node_id)
                stack.push_async_callback(siblings.close)     # also after a failed start
                await siblings.start()
            confirmer = Confirmer(upstreams, public=self.public)
            blobs = BlobService(store, fills, upstreams, metrics, confirmer, siblings=siblings)
            pinned_tags: dict[tuple[str, str, str], str] = {}      # the syncer's, read by manifests
            manifests = ManifestService(store, meta, upstreams, metrics, cfg.tag_ttl,
                                        confirmer=confirmer,
                                        max_manifest_bytes=cfg.limits.manifest_bytes,
                                        pinned_tags=pinned_tags, siblings=siblings)
            referrers = ReferrersService(store, meta, upstreams, manifests, metrics, cfg.tag_ttl)
            policy = Policy(cfg.policy, SignatureFinder(manifests, referrers, blobs, store), metrics,
                            {name: u.url for name, u in cfg.upstreams.items()})
            syncer = Syncer(cfg, store, meta, upstreams, manifests, blobs, pinned_tags=pinned_tags,
                            referrers=referrers, policy=policy)
            manifests.on_pinned_tag = syncer.pinned_tag_served
            await syncer.open()
            stack.push_async_callback(syncer.close)
            rt = Runtime(config=cfg, store=store, meta=meta, upstreams=upstreams, fills=fills,
                         blobs=blobs, manifests=manifests, referrers=referrers,
                         policy=policy, tags=TagListService(meta, upstreams, metrics,
                                              max_tags=cfg.limits.tag_list_tags), metrics=metrics,
                         syncer=syncer, siblings=siblings,
                         importer=Importer(store, meta, tuple(upstreams.clients)))
            log.info("store %s: %d blobs, %d bytes of %d budget", cfg.data_dir,
                     len(store.index), store.index.total_bytes, store.max_size)
            return rt
        except BaseException:
            await stack.aclose()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()
