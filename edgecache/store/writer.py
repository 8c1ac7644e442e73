"""One blob being written: its temp file, its hash, the offset writes, the commit.

The store hands out a BlobWriter (`BlobStore.writer`). Whoever fills it writes
chunks at explicit offsets, on a thread, hashing each as it lands; may start over
(a source that failed before anyone saw its bytes); checks the whole
(`verify`) and ends with `commit` (validate -> move -> link, in the store) or
`discard`. Disk errors leave here as StoreFull, or as the OSError itself.

Readers of the growing blob get duplicates of a read-only descriptor opened next
to the write one: it stays valid across the rename into place.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from edgecache.errors import DigestMismatch, SizeMismatch, StoreFull
from edgecache.reference import Digest
from edgecache.store.links import Owner
from edgecache.store.reading import open_for_reading

if TYPE_CHECKING:
    from edgecache.store.blobs import BlobStore


def disk_error(e: OSError) -> OSError:
    """StoreFull for a full disk (or quota), else the error as it was."""
    return StoreFull(code=e.errno) if StoreFull.means_full(e) else e


class BlobWriter:
    def __init__(self, store: "BlobStore", digest: Digest) -> None:
        self.digest = digest
        self.tmp: Path = store.temp_path()
        self._store = store
        self._hasher = digest.hasher()
        self.hashed = 0                    # bytes hashed: written to the file, or relayed
        self._wfd: int | None = None
        self._rfd: int | None = None

    async def open(self) -> None:
        """Create the temp file; StoreFull when the disk has no room even for that."""
        self._wfd, self._rfd = await asyncio.to_thread(self._open_files)

    def _open_files(self) -> tuple[int, int]:
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            wfd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as e:
            raise disk_error(e) from e
        return wfd, open_for_reading(self.tmp)

    @property
    def readable(self) -> bool:
        """Whether readers can still get a descriptor: not after `close`, nor when the
        disk was full from the start (there is no file)."""
        return self._rfd is not None

    def reader(self) -> int | None:
        """A read-only descriptor of the bytes written, the caller's to close."""
        return None if self._rfd is None else os.dup(self._rfd)

    def write(self, data: bytes, offset: int) -> "asyncio.Future[None]":
        """Write and hash data at offset, on a thread. At most one write may be in
        flight (the hash is of the bytes in order)."""
        return asyncio.get_running_loop().run_in_executor(None, self._write_sync, data, offset)

    async def put(self, data: bytes, offset: int) -> None:
        """write() and wait for it; a cancelled caller still waits for the thread, so
        the descriptor is never closed under it."""
        write = self.write(data, offset)
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            await asyncio.wait([write])
            if not write.cancelled():
                write.exception()           # retrieved: the caller is gone, not the error
            raise

    def _write_sync(self, data: bytes, offset: int) -> None:
        # At an explicit offset: a write that failed half-way leaves no shifted file
        # behind (the next source goes on at the byte count, which counts whole writes).
        assert self._wfd is not None
        view = memoryview(data)
        try:
            while view:
                n = os.pwrite(self._wfd, view, offset)
                view = view[n:]
                offset += n
        except OSError as e:
            raise disk_error(e) from e
        self._hasher.update(data)
        self.hashed += len(data)

    async def hash_only(self, data: bytes) -> None:
        """Hash bytes that are relayed but not written (the disk is full)."""
        await asyncio.to_thread(self._hasher.update, data)
        self.hashed += len(data)

    async def restart(self) -> None:
        """Forget everything written (no write may be in flight)."""
        if self._wfd is not None:
            await asyncio.to_thread(self._truncate)
        self._hasher = self.digest.hasher()
        self.hashed = 0

    def _truncate(self) -> None:
        assert self._wfd is not None
        os.ftruncate(self._wfd, 0)

    def verify(self, size: int, source: str) -> None:
        """Raise unless what was hashed is the whole blob, and the right one."""
        if self.hashed != size:
            raise SizeMismatch(size, self.hashed, source)
        computed = self._hasher.hexdigest()
        if computed != self.digest.hex:
            raise DigestMismatch(str(self.digest), f"{self.digest.algorithm}:{computed}", source)

    async def done_writing(self) -> None:
        if self._wfd is not None:
            fd, self._wfd = self._wfd, None
            await asyncio.to_thread(os.close, fd)

    async def commit(self, *, size: int, links: Iterable[Owner] = (),
                     vouched: Iterable[Owner] = (), reserved_by: object = None) -> None:
        """Into the store (which checks size and digest again, fsyncs, renames and
        links); the temp file is gone either way."""
        await self.done_writing()
        await self._store.commit(self.tmp, self.digest, size=size,
                                 computed=self._hasher.hexdigest(), written=self.hashed,
                                 links=links, vouched=vouched, reserved_by=reserved_by)

    async def discard(self) -> None:
        """Not to be kept: the temp file goes (readers keep their descriptors)."""
        await self.done_writing()
        await asyncio.to_thread(self.tmp.unlink, True)

    async def close(self) -> None:
        """Close the readers' descriptor, off the loop: the last close of a large
        unlinked file frees its blocks."""
        if self._rfd is not None:
            fd, self._rfd = self._rfd, None
            await asyncio.to_thread(os.close, fd)
