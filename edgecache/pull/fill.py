"""Filling the cache once per digest, streamed to every waiting client.

A Fill copies one blob from a source (the upstream, later a sibling) into a
temp file, hashing as it writes, and commits it to the store only when size and
digest match. Any number of readers follow the growing temp file, each through
its own duplicate of a read-only descriptor (it stays valid across the rename
into place), so they can sendfile from it like from any cached blob. The fill
runs as its own task: a client that goes away does not stop it.

No reader ever completes a response with unverified bytes: each reader holds
back the last byte of its range until the whole blob has been verified, and a
failed fill raises in every reader, which then aborts its connection.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import AsyncIterator, Callable, Protocol

from edgecache.errors import DigestMismatch, SizeMismatch, StoreFull
from edgecache.reference import Digest
from edgecache.store.blobs import BlobStore, _translate_oserror

log = logging.getLogger("edgecache.fill")

READ_CHUNK = 1 << 20


class Source(Protocol):
    """An open blob body: its announced size (or None) and its bytes."""

    size: int | None

    async def read(self, n: int = READ_CHUNK) -> bytes: ...


SourceFactory = Callable[[], AbstractAsyncContextManager[Source]]


def _write_and_hash(fd: int, hasher, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    hasher.update(data)


class Fill:
    def __init__(self, digest: Digest, store: BlobStore, open_source: SourceFactory,
                 expected_size: int | None, source_name: str, origin: object = None) -> None:
        self.digest = digest
        self.store = store
        self.source_name = source_name
        self.origin = origin            # where the bytes come from (the caller's route)
        self._open_source = open_source
        self.size: int | None = expected_size
        self.written = 0
        self.started_at = time.monotonic()
        self.error: BaseException | None = None
        self.verified = False
        self.stored = False
        self.commit_error: BaseException | None = None
        self.done = False
        self.tmp: Path = store.temp_path()
        self._rfd: int | None = None
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._headers_known = asyncio.Event()    # size known (or failure): readers can answer
        self.task: asyncio.Task[None] | None = None

    # -- the writer --------------------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"fill {self.digest}")

    async def _run(self) -> None:
        wfd: int | None = None
        hasher = self.digest.hasher()
        try:
            wfd, self._rfd = await asyncio.to_thread(self._open_files)
            async with self._open_source() as src:
                if src.size is not None:
                    if self.size is not None and src.size != self.size:
                        raise SizeMismatch(self.size, src.size, self.source_name)
                    self.size = src.size
                self._headers_known.set()
                await self._copy_in(src, wfd, hasher)
            await asyncio.to_thread(os.close, wfd)
            wfd = None
            if self.size is None:
                self.size = self.written
            if self.written != self.size:
                raise SizeMismatch(self.size, self.written, self.source_name)
            computed = hasher.hexdigest()
            if computed != self.digest.hex:
                raise DigestMismatch(str(self.digest), f"{self.digest.algorithm}:{computed}",
                                     self.source_name)
            # The bytes are right: readers may finish now, while the store fsyncs and
            # renames (durability of the cache is not the clients' wait).
            self.verified = True
            self._notify()
            try:
                # Shielded: a shutdown must not leave a renamed blob the index never heard of.
                commit = asyncio.ensure_future(self.store.commit(
                    self.tmp, self.digest, size=self.size, computed=computed, written=self.written))
                try:
                    await asyncio.shield(commit)
                except asyncio.CancelledError:
                    await asyncio.wait([commit])
                    raise
                self.stored = True
            except Exception as e:   # noqa: BLE001 - the clients still get their verified bytes
                self.commit_error = e
                if isinstance(e, StoreFull):
                    self.store.note_disk_full(time.time())
                log.warning("could not store %s: %s", self.digest, e)
        except BaseException as e:   # noqa: BLE001 - every failure is handed to the readers
            if isinstance(e, StoreFull):
                self.store.note_disk_full(time.time())
            log.warning("fill of %s from %s failed after %d bytes: %s",
                        self.digest, self.source_name, self.written, e)
            # Clean up first, then tell the readers: when a client sees the abort, the
            # partial file is already gone.
            if wfd is not None:
                await asyncio.to_thread(os.close, wfd)
            await asyncio.to_thread(self.tmp.unlink, True)
            self.error = e
            if isinstance(e, asyncio.CancelledError):
                raise
        finally:
            self.done = True
            self._headers_known.set()
            self._notify()
            if self._rfd is not None:
                # Off the loop: the last close of a large unlinked file frees its blocks.
                fd, self._rfd = self._rfd, None
                await asyncio.to_thread(os.close, fd)

    async def _copy_in(self, src: Source, wfd: int, hasher) -> None:
        """Copy the source into the temp file, hashing, telling readers as bytes land.

        Double-buffered: the next chunk arrives while a thread writes and hashes this
        one. At most one write is in flight, so writes stay in order, and none is left
        running when this returns or raises (the descriptor is closed after it).
        Readers hear of each write as soon as it lands, not when the next chunk comes.
        """
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[None] | None = None
        received = 0
        try:
            while True:
                chunk = await src.read(READ_CHUNK)
                received += len(chunk)
                if self.size is not None and received > self.size:
                    raise SizeMismatch(self.size, received, self.source_name)
                if pending is not None:
                    try:
                        # Shielded: a cancelled fill still waits (in finally) for this write.
                        await asyncio.shield(pending)
                    except OSError as e:
                        raise _translate_oserror(e) from e
                    pending = None
                if not chunk:
                    return
                pending = loop.run_in_executor(None, _write_and_hash, wfd, hasher, chunk)
                pending.add_done_callback(lambda f, n=len(chunk): self._landed(f, n))
        finally:
            if pending is not None:
                await asyncio.wait([pending])

    def _landed(self, write: asyncio.Future[None], n: int) -> None:
        if not write.cancelled() and write.exception() is None:
            self.written += n
            self._notify()

    def _open_files(self) -> tuple[int, int]:
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            wfd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as e:
            raise _translate_oserror(e) from e
        return wfd, os.open(self.tmp, os.O_RDONLY)

    def _notify(self) -> None:
        fut, self._changed = self._changed, asyncio.get_running_loop().create_future()
        fut.set_result(None)

    # -- the readers -----------------------------------------------------------

    async def wait_headers(self) -> int | None:
        """The blob's size once known; raises the fill's error if it failed first."""
        await self._headers_known.wait()
        if self.error is not None:
            raise self.error
        return self.size

    async def wait_verified(self) -> int:
        """The size, once the whole blob is verified (for answers that need it up front)."""
        while not self.verified:
            if self.error is not None:
                raise self.error
            await self._changed
        assert self.size is not None
        return self.size

    async def open_fd(self) -> int:
        """A read-only descriptor of the blob's bytes, the caller's to close.

        A duplicate of the temp file's while the fill runs (it survives the rename),
        or the stored blob's once the fill is done.
        """
        await self._headers_known.wait()
        if self._rfd is not None:
            return os.dup(self._rfd)
        if self.stored:
            return await asyncio.to_thread(os.open, self.store.path(self.digest), os.O_RDONLY)
        raise self.error or self.commit_error or SizeMismatch(self.size or 0, self.written, "fill")

    async def spans(self, start: int = 0, end: int | None = None) -> AsyncIterator[tuple[int, int]]:
        """(offset, count) windows of [start, end) as they can be sent.

        The last byte of the range comes only after the whole blob is verified; a
        failed fill raises here, in every reader.
        """
        pos = start
        while True:
            if self.error is not None:
                raise self.error
            stop = end if end is not None else self.size
            if stop is not None and pos >= stop and self.verified:
                return          # an empty range too: only once the blob is verified
            # While unverified, stay one byte short of the response's end.
            if self.verified:
                limit = self.written if stop is None else min(stop, self.written)
            else:
                limit = min(self.written, stop - 1) if stop is not None else self.written - 1
            if pos < limit:
                yield pos, limit - pos
                pos = limit
                continue
            if self.verified:
                return
            await self._changed


class FillRegistry:
    """Single flight: at most one Fill per digest, across every repository and upstream."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self._fills: dict[str, Fill] = {}
        self.coalesced = 0          # requests that joined a fill another request started
        self.on_finish: Callable[[Fill], None] | None = None

    def get(self, digest: Digest) -> Fill | None:
        return self._fills.get(str(digest))

    def start(self, digest: Digest, open_source: SourceFactory, *, expected_size: int | None,
              source_name: str, origin: object = None) -> Fill:
        key = str(digest)
        existing = self._fills.get(key)
        if existing is not None and existing.error is None:
            self.coalesced += 1
            return existing
        fill = Fill(digest, self.store, open_source, expected_size, source_name, origin)
        self._fills[key] = fill
        fill.start()
        assert fill.task is not None
        fill.task.add_done_callback(lambda _t: self._finished(key, fill))
        return fill

    def _finished(self, key: str, fill: Fill) -> None:
        if self._fills.get(key) is fill:
            del self._fills[key]
        if self.on_finish:
            self.on_finish(fill)

    def active(self) -> list[Fill]:
        return list(self._fills.values())

    async def close(self) -> None:
        tasks = [f.task for f in self._fills.values() if f.task]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
