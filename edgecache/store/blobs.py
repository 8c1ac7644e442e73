"""Content-addressed blob store with an LRU size budget and pins.

The budget covers the unpinned blobs stored and the bytes of fills under way
(`reserve`): one evictor task, owned by the store, brings them under the low
watermark whenever they pass the high one: woken by commits and reservations, at
start, and every `evict_interval` besides.

A blob enters only through `commit`: the writer has already hashed the bytes it
wrote to a temp file; commit checks size and digest, fsyncs, renames into place,
then records it in the index (validate -> move -> link -> clean up). A blob on
disk is therefore always whole and verified. All file-system work runs on
threads: the event loop never blocks on the disk.

Longer than most modules on purpose: it is the one owner of data_dir's blobs, and
commit, eviction, pins, verification and repair change the same index and files
under the same rules (the layout, index, links and writer are modules of their own).
"""
from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import shutil
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from edgecache.errors import DigestMismatch, SizeMismatch, StoreFull, StoreLocked
from edgecache.reference import Digest, parse_digest
from edgecache.store import layout
from edgecache.store.index import BlobIndex
from edgecache.store.links import Links, Owner
from edgecache.store.writer import BlobWriter, disk_error

log = logging.getLogger("edgecache.store")


@dataclass
class StoreStats:
    evictions: int = 0
    evicted_bytes: int = 0
    quarantined: int = 0
    repaired_missing_files: int = 0     # index entries whose file was gone
    repaired_orphan_files: int = 0      # files that had no index entry
    disk_full: int = 0
    last_disk_full: float = 0.0
    last_verify: float = 0.0
    verified_bad: int = 0
    flush_errors: int = 0               # periodic index flushes that failed (retried)
    last_flush_error: str | None = None
    last_flush_error_at: float = 0.0


@dataclass
class VerifyReport:
    checked: int = 0
    bytes: int = 0
    bad: list[str] = field(default_factory=list)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock(path: Path) -> int:
    """Hold an exclusive lock on data_dir for the store's lifetime: two processes
    sharing one store would delete each other's temp files and blobs."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLocked(f"{path.parent} is in use by another edgecache process "
                          "(a running daemon: ask it, or stop it first)") from None
    return fd


class BlobStore:
    """Owns data_dir: the blob files, the temp dir and the blob index."""

    def __init__(self, data_dir: Path, max_size: int, *, high_watermark: float = 0.95,
                 low_watermark: float = 0.85, evict_interval: float = 30.0) -> None:
        self.data_dir = data_dir
        self.index = BlobIndex(layout.index_dir(data_dir))
        self.links = Links(layout.links_dir(data_dir))
        self.stats = StoreStats()
        self._in_use: dict[str, int] = {}
        # Bytes promised to fills under way (by fill), counted against the budget.
        self._reserved: dict[object, int] = {}
        self.reserved_bytes = 0
        # One thread for index writes keeps them in order; file work uses the default pool.
        self._index_io = ThreadPoolExecutor(1, thread_name_prefix="edgecache-index")
        self._evictor: asyncio.Task[None] | None = None
        self._evict_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        # (size, free bytes) of the file system data_dir is on, read by the evictor.
        self.filesystem: tuple[int, int] | None = None
        self._fs_at = 0.0
        self.evict_interval = evict_interval    # read at every wait: a reload changes it
        self._flusher: asyncio.Task[None] | None = None
        self.set_budget(max_size, high_watermark, low_watermark)
        self._lock_fd: int | None = None

    def set_budget(self, max_size: int, high_watermark: float, low_watermark: float) -> None:
        """The LRU budget; a smaller one takes effect at once (a config reload)."""
        self.max_size = max_size
        self.high = int(max_size * high_watermark)
        self.low = int(max_size * low_watermark)
        self._maybe_evict()

    # -- lifecycle -------------------------------------------------------------

    async def open(self, flush_interval: float = 5.0) -> None:
        await asyncio.get_running_loop().run_in_executor(self._index_io, self.open_sync)
        self._flusher = asyncio.create_task(self._flush_periodically(flush_interval),
                                            name="store flusher")
        self._evictor = asyncio.create_task(self._evict_forever(), name="store evictor")
        self._maybe_evict()              # a store over a (new, smaller) budget at start

    def open_sync(self) -> None:
        """Lock data_dir, create the tree, clear stale temp files, load the index, repair."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock(layout.lock_path(self.data_dir))
        for d in (layout.blobs_dir(self.data_dir), layout.tmp_dir(self.data_dir),
                  layout.index_dir(self.data_dir)):
            d.mkdir(parents=True, exist_ok=True)
        # A fill in progress at the last stop can never complete: drop it.
        for p in layout.tmp_dir(self.data_dir).iterdir():
            p.unlink(missing_ok=True)
        clean = self.index.load()
        self.links.load()
        if not len(self.index):
            self.links.mark_current()           # a new data_dir: nothing to upgrade
        if not clean:
            self._reconcile()
        # Links to digests that are not here (never arrived, or lost in a crash) are
        # made again by whatever fetches them; pinned ones by the syncer at its start.
        self.links.prune(lambda d: d in self.index, lambda d: False)
        self.links.flush()
        self.index.flush()

    def _reconcile(self) -> None:
        """Make the index and the files agree after an unclean stop."""
        on_disk: dict[str, int] = {}
        for root, _dirs, files in os.walk(layout.blobs_dir(self.data_dir)):
            for name in files:
                p = Path(root) / name
                d = layout.digest_from_path(p)
                if d is None:
                    continue
                on_disk[str(d)] = p.stat().st_size
        for digest in self.index.digests():
            if digest not in on_disk or on_disk[digest] != self.index.size(digest):
                self._forget(digest)
                self.stats.repaired_missing_files += 1
        for digest, size in on_disk.items():
            if digest not in self.index:
                # Only verified blobs are ever renamed into blobs/, so the file is whole.
                self.index.add(digest, size)
                self.stats.repaired_orphan_files += 1

    async def close(self) -> None:
        for task in (self._flusher, self._evictor):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self.index.save_touched()
        await asyncio.get_running_loop().run_in_executor(self._index_io, self.close_sync)
        self._index_io.shutdown(wait=True)

    def healthy(self) -> bool:
        """For the watchdog: the store is open and its directory still there."""
        return self._lock_fd is not None and self.data_dir.is_dir()

    def close_sync(self) -> None:
        self.links.close()
        self.index.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)         # releases the lock
            self._lock_fd = None

    async def _flush_periodically(self, interval: float) -> None:
        """Last-use times reach the disk every interval. A failure (a full disk) is
        logged and counted, and the changes stay queued for the next try."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush()
            except Exception as e:   # noqa: BLE001 - this task must outlive any one flush
                self.stats.flush_errors += 1
                self.stats.last_flush_error = f"{type(e).__name__}: {e}"
                self.stats.last_flush_error_at = time.time()
                if isinstance(e, StoreFull):
                    self.note_disk_full(time.time())
                log.warning("index not written (retried in %.0f s): %s", interval, e)

    async def flush(self) -> None:
        self.index.save_touched()
        await asyncio.get_running_loop().run_in_executor(self._index_io, self._flush_sync)

    def _flush_sync(self) -> None:
        # Links first: a blob record that reached the disk has its links there too.
        self.links.flush()
        self.index.flush()

    def _forget(self, digest: str) -> None:
        """A blob leaves the store: its record and its links."""
        self.index.remove(digest)
        self.links.drop(digest)

    # -- reads -----------------------------------------------------------------

    def path(self, digest: Digest) -> Path:
        return layout.blob_path(self.data_dir, digest)

    def size(self, digest: Digest) -> int | None:
        return self.index.size(str(digest))

    def has(self, digest: Digest | str) -> bool:
        return str(digest) in self.index

    def linked(self, digest: Digest | str, owner: Owner) -> bool:
        return self.links.has(str(digest), owner)

    def touch(self, digest: Digest | str) -> None:
        self.index.touch(str(digest))

    @contextmanager
    def lease(self, digest: Digest) -> Iterator[None]:
        """Hold while serving: a leased blob is never evicted."""
        key = str(digest)
        self._in_use[key] = self._in_use.get(key, 0) + 1
        try:
            yield
        finally:
            n = self._in_use[key] - 1
            if n:
                self._in_use[key] = n
            else:
                del self._in_use[key]

    async def read_bytes(self, digest: Digest) -> bytes:
        return await asyncio.to_thread(self.path(digest).read_bytes)

    # -- writes ----------------------------------------------------------------

    def temp_path(self) -> Path:
        return layout.tmp_path(self.data_dir, secrets.token_hex(12))

    def writer(self, digest: Digest) -> BlobWriter:
        """A new temp file for digest, to write, verify and commit (store/writer.py)."""
        return BlobWriter(self, digest)

    async def commit(self, tmp: Path, digest: Digest, *, size: int, computed: str,
                     written: int, links: Iterable[Owner] = (),
                     vouched: Iterable[Owner] = (), reserved_by: object = None) -> None:
        """Move a fully written, hashed temp file into place and link it to the
        (upstream, repository) it came through; raises and deletes it if wrong.
        Validate, move, link, clean up, as Distribution's blob writer does."""
        try:
            if written != size:
                raise SizeMismatch(size, written)
            if computed != digest.hex:
                raise DigestMismatch(str(digest), f"{digest.algorithm}:{computed}")
            await asyncio.to_thread(self._move_into_place, tmp, self.path(digest))
        except BaseException:
            await asyncio.to_thread(tmp.unlink, True)
            raise
        for owner in links:
            self.links.add(str(digest), owner)
        for owner in vouched:
            self.links.add(str(digest), owner, vouched=True)
        self.index.add(str(digest), size)
        self.release(reserved_by)            # its bytes are stored now: counted once
        if self.links.needs_prune(len(self.index)):
            self.links.prune(lambda d: d in self.index, self.index.is_pinned)
        await self.flush()
        self._maybe_evict()

    async def link(self, digests: Iterable[Digest | str], owner: Owner, *,
                   vouched: bool = False) -> None:
        """Record that digests belong to (upstream, repository), flushed at once with
        the index; on a full disk the change stays queued for the next flush.
        `vouched`: on the upstream's word alone (store/links.py, MAX_VOUCHED)."""
        if sum(self.links.add(str(d), owner, vouched=vouched) for d in digests):
            try:
                await self.flush()
            except (StoreFull, sqlite3.Error) as e:
                # Kept in memory and queued: written by the next flush that succeeds.
                if isinstance(e, StoreFull):
                    self.note_disk_full(time.time())
                log.warning("links not written yet: %s", e)

    async def read_range(self, digest: Digest, offset: int, n: int) -> bytes:
        """n bytes of a stored blob from offset (off the loop)."""
        def read() -> bytes:
            with open(self.path(digest), "rb") as f:
                f.seek(offset)
                return f.read(n)
        return await asyncio.to_thread(read)

    @staticmethod
    def _move_into_place(tmp: Path, final: Path) -> None:
        try:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except OSError as e:
            raise disk_error(e) from e

    async def put_bytes(self, digest: Digest, data: bytes, link: Owner | None = None) -> None:
        """Store a small verified blob (a manifest) in one go."""
        if self.has(digest):
            self.touch(digest)
            if link is not None:
                await self.link([digest], link)
            return
        writer = self.writer(digest)
        try:
            await writer.open()
            await writer.put(data, 0)
        except BaseException:
            await writer.discard()
            raise
        finally:
            await writer.close()
        await writer.commit(size=len(data), links=[link] if link else [])

    async def delete(self, digest: Digest) -> None:
        self._forget(str(digest))
        await asyncio.to_thread(self.path(digest).unlink, True)
        await self.flush()

    def note_disk_full(self, now: float) -> None:
        self.stats.disk_full += 1
        self.stats.last_disk_full = now

    # -- pins ------------------------------------------------------------------

    async def pin(self, digest: Digest | str, owner: str) -> None:
        await self.pin_many([digest], owner)

    async def unpin(self, digest: Digest | str, owner: str) -> None:
        await self.unpin_many([digest], owner)

    async def pin_many(self, digests: Iterable[Digest | str], owner: str) -> None:
        """Pin (also digests not stored yet: they are exempt from eviction once they land)."""
        for d in digests:
            self.index.pin(str(d), owner)
        await self.flush()

    async def unpin_many(self, digests: Iterable[Digest | str], owner: str) -> None:
        for d in digests:
            self.index.unpin(str(d), owner)
        await self.flush()
        self._maybe_evict()

    def is_pinned(self, digest: Digest | str) -> bool:
        return self.index.is_pinned(str(digest))

    # -- the budget ------------------------------------------------------------

    def reserve(self, owner: object, nbytes: int) -> None:
        """Count nbytes of a fill under way against the budget (replacing what this
        owner reserved before); room is made for them before they land."""
        self.reserved_bytes += nbytes - self._reserved.get(owner, 0)
        self._reserved[owner] = nbytes
        self._maybe_evict()

    def release(self, owner: object) -> None:
        self.reserved_bytes -= self._reserved.pop(owner, 0)

    def budgeted_bytes(self) -> int:
        """What the budget holds: unpinned blobs stored, and fills under way."""
        return self.index.unpinned_bytes + self.reserved_bytes

    @property
    def evicting(self) -> bool:
        """An eviction is under way (a blob may be out of the index, its file not yet gone)."""
        return self._evict_lock.locked()

    def _maybe_evict(self) -> None:
        if self.budgeted_bytes() > self.high:
            self._wake.set()

    async def _evict_forever(self) -> None:
        """The one evictor: whenever the budget is passed, down to the low watermark."""
        while True:
            if time.monotonic() - self._fs_at > 5.0:
                # For /metrics, read off the loop (a hung file system must not stall it).
                self._fs_at = time.monotonic()
                try:
                    fs = await asyncio.to_thread(os.statvfs, self.data_dir)
                    self.filesystem = (fs.f_blocks * fs.f_frsize, fs.f_bavail * fs.f_frsize)
                except OSError:
                    pass
            try:
                async with asyncio.timeout(self.evict_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if self.budgeted_bytes() <= self.high:
                continue
            try:
                t0 = time.monotonic()
                n, freed = await self.evict_to(max(0, self.low - self.reserved_bytes))
                if n:
                    log.info("eviction: %d blobs, %d bytes freed in %.2f s; %d of %d bytes used",
                             n, freed, time.monotonic() - t0, self.budgeted_bytes(), self.max_size)
            except Exception as e:   # noqa: BLE001 - tried again at the next wake
                log.warning("eviction stopped: %s", e)

    async def evict_to(self, target: int) -> tuple[int, int]:
        """Evict least recently used unpinned, unleased blobs until unpinned bytes <= target."""
        count = freed = 0
        async with self._evict_lock:
            for digest, entry in self.index.oldest_first():
                if self.index.unpinned_bytes <= target:
                    break
                if digest not in self.index or self.index.is_pinned(digest) or digest in self._in_use:
                    continue
                self._forget(digest)
                await asyncio.to_thread(self.path(parse_digest(digest)).unlink, True)
                count += 1
                freed += entry.size
                self.stats.evictions += 1
                self.stats.evicted_bytes += entry.size
            if count:
                await self.flush()
        return count, freed

    async def gc(self) -> tuple[int, int]:
        """Evict down to the budget now (used by `edgecache gc`)."""
        return await self.evict_to(min(self.max_size, self.low))

    # -- verification ----------------------------------------------------------

    async def verify(self, progress: Callable[[str, bool], None] | None = None,
                     rate: int | None = None) -> VerifyReport:
        """Re-hash every blob; quarantine the ones that do not match their name.

        With rate (bytes/s), paced so a background scrub leaves the disk to clients.
        """
        report = VerifyReport()
        started = time.monotonic()
        for digest in self.index.digests():
            if rate:
                ahead = report.bytes / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            if digest not in self.index:
                continue                     # evicted meanwhile
            d = parse_digest(digest)
            if str(d) in self._in_use:
                continue
            ok = await asyncio.to_thread(self._hash_ok, self.path(d), d)
            report.checked += 1
            report.bytes += self.index.size(digest) or 0
            if not ok:
                report.bad.append(digest)
                await self.quarantine(d)
            if progress:
                progress(digest, ok)
        self.stats.last_verify = time.time()
        self.stats.verified_bad += len(report.bad)
        return report

    @staticmethod
    def _hash_ok(path: Path, digest: Digest) -> bool:
        h = digest.hasher()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        except FileNotFoundError:
            return False
        return h.hexdigest() == digest.hex

    async def quarantine(self, digest: Digest) -> None:
        self._forget(str(digest))
        dst = await asyncio.to_thread(self._move_to_quarantine, digest)
        self.stats.quarantined += 1
        log.warning("quarantined %s: its bytes do not hash to its name (kept as %s; fetched "
                    "again when asked for)", digest, dst)
        await self.flush()

    def _move_to_quarantine(self, digest: Digest) -> Path | None:
        src = self.path(digest)
        n = 0
        while (dst := layout.quarantine_path(self.data_dir, digest, n)).exists():
            n += 1
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.move(src, dst)
        except FileNotFoundError:
            return None
        return dst

    # -- figures ---------------------------------------------------------------

    def status(self) -> dict[str, int]:
        return {
            "bytes_used": self.index.total_bytes,
            "unpinned_bytes": self.index.unpinned_bytes,
            "pinned_bytes": self.index.pinned_bytes,
            "budget_bytes": self.max_size,
            "blob_count": len(self.index),
            "in_use": len(self._in_use),
            "reserved_bytes": self.reserved_bytes,
            "flush_errors": self.stats.flush_errors,
        }
