"""Operator endpoints: /_edgecache/health, /_edgecache/status, /metrics, gc, verify,
sync and import for the CLI, and the siblings' health check /_edgecache/sibling."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Iterable

from aiohttp import web

from edgecache import __version__
from edgecache.errors import StoreFull
from edgecache.seed.importer import room_under
from edgecache.seed.exporter import Exporter, pinned_set
from edgecache.metrics import counter, gauge, labelled_counter
from edgecache.server.endpoint import endpoint
from edgecache.server.guard import ADMIN, OPEN, OPERATOR
from edgecache.server import status_page
from edgecache.server.guard import identity
from edgecache.server.oci_errors import DENIAL_LOG
from edgecache.siblings import hopauth
from edgecache.siblings import server as siblings_server
from edgecache.server.registry_api import SERVICES, Services

STARTED = web.AppKey("started", float)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def sibling(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    return web.json_response(siblings_server.ping(svc.siblings, svc.store.healthy(),
                                                  identity(request),
                                                  request.query.get("challenge", "")))


async def status(request: web.Request) -> web.Response:
    return web.json_response(status_doc(request.app[SERVICES], request.app[STARTED]))


async def page(request: web.Request) -> web.Response:
    """The status page (server/status_page.py), under the same access rules."""
    svc = request.app[SERVICES]
    m = svc.metrics
    totals = {"hits": float(m.hits), "misses": float(m.misses),
              **{f"served:{k}": float(v) for k, v in m.served_bytes.items()}}
    body = status_page.render(status_doc(svc, request.app[STARTED]), totals, m.recent.minutes(),
                              list(m.recent.errors), list(request.app[DENIAL_LOG].recent))
    return web.Response(text=body, content_type="text/html",
                        headers={"Cache-Control": "no-store",
                                 "Content-Security-Policy": "default-src 'none'; "
                                 "style-src 'unsafe-inline'; img-src data:"})


def status_doc(svc: Services, started: float) -> dict:
    """What /_edgecache/status answers (and the status page shows)."""
    store = svc.store
    s = store.status()
    return {
        "version": __version__,
        "now": time.time(),
        "uptime_s": round(time.monotonic() - started, 1),
        "store": {**s, "disk_full_events": store.stats.disk_full,
                  "evictions": store.stats.evictions, "evicted_bytes": store.stats.evicted_bytes,
                  "quarantined": store.stats.quarantined,
                  "last_verify": store.stats.last_verify or None,
                  "disk_full": bool(store.stats.last_disk_full
                                    and time.time() - store.stats.last_disk_full < 300)},
        "bytes_used": s["bytes_used"],
        "budget_bytes": s["budget_bytes"],
        "blob_count": s["blob_count"],
        "pinned_bytes": s["pinned_bytes"],
        "hit_ratio": svc.metrics.hit_ratio(),
        "fills_in_progress": [{"digest": str(f.digest), "bytes": f.written, "size": f.size,
                               "source": f.source_name} for f in svc.blobs.fills.active()],
        "upstreams": {name: c.status() for name, c in svc.blobs.upstreams.clients.items()},
        "background": {
            "index_flush_errors": store.stats.flush_errors,
            "index_last_flush_error": store.stats.last_flush_error,
            "metadata_flush_errors": svc.manifests.meta.flush_errors,
            "metadata_last_flush_error": svc.manifests.meta.last_flush_error,
            "fills_abandoned": svc.blobs.fills.abandoned,
            "password_checks_refused": svc.access.passwords.refused,
        },
        "data_dir": str(svc.config.data_dir),
        "sync": svc.syncer.status(),
        "sync_last_success": dict(svc.syncer.state.last_success),
        "siblings": svc.siblings.status() if svc.siblings is not None else None,
    }


async def sync_start(request: web.Request) -> web.Response:
    """Start a sync now (or join the one under way); follow it with GET."""
    svc = request.app[SERVICES]
    if request.query.get("reload") != "0":
        await svc.syncer.reload()
    svc.syncer.sync()
    return web.json_response(svc.syncer.status(), status=202)


async def gc(request: web.Request) -> web.Response:
    """`edgecache gc` against a running daemon: evict down to the budget now."""
    store = request.app[SERVICES].store
    n, freed = await store.gc()
    return web.json_response({"evicted": n, "freed_bytes": freed, **store.status()})


async def verify(request: web.Request) -> web.Response:
    """`edgecache verify` against a running daemon: re-hash every blob, quarantine the bad."""
    report = await request.app[SERVICES].store.verify()
    return web.json_response({"checked": report.checked, "bytes": report.bytes, "bad": report.bad})


async def import_archives(request: web.Request) -> web.StreamResponse:
    """`edgecache import` against a running daemon: the archive is the request body (the
    CLI reads the file; the daemon opens no path it is given), kept in data_dir/tmp
    while it is imported; progress as JSON lines, the report last."""
    svc = request.app[SERVICES]
    svc.access.check_seeder(identity(request), request.remote)
    pin = request.query.get("pin", "false") == "true"
    name = request.query.get("name", "archive")[:200]
    upload = svc.store.temp_path()
    room = room_under(svc.store.data_dir)
    try:
        got = 0
        with await asyncio.to_thread(open, upload, "xb") as f:
            async for chunk in request.content.iter_chunked(1 << 20):
                got += len(chunk)
                if got > room:
                    raise StoreFull(f"the archive is larger than the room under data_dir ({room} bytes)")
                await asyncio.to_thread(f.write, chunk)
        return await _with_progress(request, lambda progress: svc.importer.run(
            [upload], pin=pin, progress=lambda m: progress(m.replace(str(upload), name))))
    finally:
        await asyncio.to_thread(upload.unlink, True)


async def export_pinned(request: web.Request) -> web.StreamResponse:
    """`edgecache export --pinned OUT` against a running daemon: the tarball is the
    answer (the CLI writes OUT; the daemon writes only under data_dir/tmp), its report
    in X-Edgecache-Report."""
    svc = request.app[SERVICES]
    svc.access.check_seeder(identity(request), request.remote)
    out = svc.store.temp_path().with_suffix(".tar")
    try:
        images = pinned_set(svc.syncer.state, svc.store, svc.manifests.meta)
        report = (await Exporter(svc.store).run(images, out)).as_dict()
        text = json.dumps(report)
        if len(text) > 48_000:              # a header line: the counts will do
            text = json.dumps({**report, "images": report["images"][:100]})
        resp = web.StreamResponse(headers={"Content-Type": "application/x-tar",
                                           "X-Edgecache-Report": text})
        resp.content_length = out.stat().st_size
        await resp.prepare(request)
        with open(out, "rb") as f:
            while chunk := await asyncio.to_thread(f.read, 1 << 20):
                await resp.write(chunk)
        await resp.write_eof()
        return resp
    finally:
        await asyncio.to_thread(out.unlink, True)


async def _with_progress(request: web.Request, job) -> web.StreamResponse:
    """Run job(progress) to the end whatever the client does; its progress lines and
    then its report (as_dict) as JSON lines."""
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    async def work() -> dict:
        try:
            return (await job(lines.put_nowait)).as_dict()
        except OSError as e:                # a path it cannot read or write, a full disk
            return {"error": f"{type(e).__name__}: {e}"}
        finally:
            lines.put_nowait(None)
    # A task of its own: a client that goes away does not leave the job half done.
    task = asyncio.ensure_future(work())
    try:
        while (line := await lines.get()) is not None:
            await resp.write(json.dumps({"progress": line}).encode() + b"\n")
    finally:
        report = await asyncio.shield(task)     # finished even if the client went away
    await resp.write(json.dumps({"report": report}).encode() + b"\n")
    await resp.write_eof()
    return resp


async def sync_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICES].syncer.status())


async def metrics(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    return web.Response(body=svc.metrics.render(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def state_collector(svc: Services) -> Iterable:
    """Gauges read at scrape time from what the store and upstreams own."""
    def collect() -> Iterable:
        st = svc.store.status()
        yield gauge("edgecache_store_bytes", "Bytes in the store", ["kind"],
                    [(["used"], st["bytes_used"]), (["pinned"], st["pinned_bytes"]),
                     (["unpinned"], st["unpinned_bytes"]), (["budget"], st["budget_bytes"])])
        yield gauge("edgecache_store_blobs", "Blobs in the store", samples=[([], st["blob_count"])])
        yield counter("edgecache_evictions", "Blobs evicted by LRU", svc.store.stats.evictions)
        yield counter("edgecache_evicted_bytes", "Bytes evicted by LRU",
                      svc.store.stats.evicted_bytes)
        yield counter("edgecache_quarantined", "Blobs quarantined after failed verification",
                      svc.store.stats.quarantined)
        yield counter("edgecache_disk_full_events", "Writes refused because the disk was full",
                      svc.store.stats.disk_full)
        if svc.store.filesystem is not None:
            fs_size, fs_free = svc.store.filesystem
            yield gauge("edgecache_data_dir_filesystem_bytes",
                        "The file system data_dir is on: its size and the bytes free to us",
                        ["kind"], [(["size"], fs_size), (["free"], fs_free)])
        states = ("closed", "half_open", "open")
        yield gauge("edgecache_upstream_breaker_state",
                    "Circuit breaker state per upstream (1 for the current state)",
                    ["upstream", "state"],
                    [([n, s], 1.0 if c.breaker.state == s else 0.0)
                     for n, c in svc.blobs.upstreams.clients.items() for s in states])
        yield gauge("edgecache_upstream_up", "1 when the upstream's breaker is closed and its "
                    "last request was answered (not unreachable, not a 5xx)",
                    ["upstream"], [([n], 1.0 if c.up else 0.0)
                                   for n, c in svc.blobs.upstreams.clients.items()])
        yield gauge("edgecache_links", "Repository links: (upstream, repository) pairs of held digests",
                    samples=[([], svc.store.links.count)])
        yield labelled_counter(
            "edgecache_link_checks", "Questions to an upstream (a HEAD, or two 64 KiB windows "
            "to prove it) whether a repository has a digest held under another route, by answer "
            "(yes links it)", ["upstream", "answer"],
            [([u, a], n) for (u, a), n in sorted(svc.blobs.confirmer.results.items())])
        yield gauge("edgecache_fills_in_progress", "Blob fills under way",
                    samples=[([], len(svc.blobs.fills.active()))])
        yield gauge("edgecache_fill_reserved_bytes",
                    "Bytes of fills under way counted against the budget",
                    samples=[([], st["reserved_bytes"])])
        yield counter("edgecache_fills_abandoned",
                      "Fills cancelled because no client waited for them any more",
                      svc.blobs.fills.abandoned)
        yield labelled_counter("edgecache_flush_errors", "Background flushes that failed "
                               "(retried at the next interval)", ["what"],
                               [(["index"], svc.store.stats.flush_errors),
                                (["metadata"], svc.manifests.meta.flush_errors)])
        yield counter("edgecache_password_checks_refused",
                      "Basic credential checks refused with 429 (a client over its share)",
                      svc.access.passwords.refused)
        yield counter("edgecache_sendfile_bytes", "Blob bytes sent with the kernel's sendfile",
                      svc.sender.sendfile_bytes)
        yield counter("edgecache_copied_bytes", "Blob bytes copied out through the event loop "
                      "(TLS connections, or where sendfile cannot be used)", svc.sender.copied_bytes)
        yield counter("edgecache_copy_thread_reads", "Chunks of copied blobs a thread read: not "
                      "in the page cache, or on a file system without RWF_NOWAIT",
                      svc.sender.thread_reads)
        sync = svc.syncer.status()
        yield gauge("edgecache_sync_entries", "Pinned and prefetch entries by state",
                    ["list", "state"],
                    [([kind, state], sync["totals"][kind][state]) for kind in ("pinned", "prefetch")
                     for state in ("desired", "complete", "failed", "fetching", "pending")])
        yield gauge("edgecache_sync_entry_complete", "1 when the entry's image is complete",
                    ["list", "ref", "platforms"],
                    [([e["kind"], e["ref"], ",".join(e["platforms"])],
                      1.0 if e["state"] == "complete" else 0.0) for e in sync["entries"]])
        yield gauge("edgecache_sync_list_problems", "Problems in the list files",
                    samples=[([], len(sync["problems"]))])
        yield gauge("edgecache_sync_last_success_timestamp_seconds",
                    "When a sync last ended with every entry of the list complete (0: never)",
                    ["list"], [([kind], svc.syncer.state.last_success.get(kind, 0.0))
                               for kind in ("pinned", "prefetch")])
        yield gauge("edgecache_sync_interval_seconds",
                    "Seconds between scheduled syncs (sync.interval, or the schedule's next gap)",
                    samples=[([], svc.syncer.interval())])
        if svc.siblings is not None:
            yield from svc.siblings.collect()
    return collect


def add_routes(app: web.Application) -> None:
    app.router.add_get("/_edgecache/health", endpoint(health, OPEN))
    app.router.add_get("/_edgecache/status", endpoint(status, OPERATOR))
    app.router.add_get("/_edgecache/", endpoint(page, OPERATOR))
    app.router.add_get(hopauth.PING_PATH, endpoint(sibling, OPEN))
    app.router.add_get("/metrics", endpoint(metrics, OPERATOR))
    app.router.add_post("/_edgecache/sync", endpoint(sync_start, ADMIN))
    app.router.add_post("/_edgecache/gc", endpoint(gc, ADMIN))
    app.router.add_post("/_edgecache/verify", endpoint(verify, ADMIN))
    app.router.add_post("/_edgecache/import", endpoint(import_archives, ADMIN))
    app.router.add_post("/_edgecache/export", endpoint(export_pinned, ADMIN))
    app.router.add_get("/_edgecache/sync", endpoint(sync_status, OPERATOR))
