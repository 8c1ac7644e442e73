"""Fills against sources held in this process (the HTTP paths are in the server
and sibling tests): byte accounting, and untrusted sources failing over."""
from __future__ import annotations

import contextlib
import os

from edgecache.errors import DigestMismatch
from edgecache.pull.fill import FillRegistry
from edgecache.reference import digest_of
from edgecache.store.blobs import BlobStore


class Chunks:
    """A source that hands out fixed chunks with no pause between them."""

    def __init__(self, chunks: list[bytes], *, trusted: bool = True) -> None:
        self.chunks = list(chunks)
        self.size = sum(len(c) for c in chunks)
        self.trusted = trusted
        self.rejected: list[BaseException] = []

    async def read(self, n: int = 1 << 20) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def reject(self, err: BaseException) -> None:
        self.rejected.append(err)


def factory(src):
    @contextlib.asynccontextmanager
    async def open_source():
        yield src
    return open_source


async def test_a_last_chunk_that_lands_at_once_is_counted(tmp_path):
    """The last write can be done before the copy loop looks at it; it must still
    count (it once did not, when a sibling sent its held-back last byte alone)."""
    store = BlobStore(tmp_path, 1 << 30)
    await store.open()
    fills = FillRegistry(store)
    try:
        for i in range(30):
            data = os.urandom(4096 + i)
            d = digest_of(data)
            fill = fills.start(d, factory(Chunks([data[:-1], data[-1:]])), expected_size=None,
                               source_name="test")
            await fill.task
            assert fill.error is None and fill.stored, fill.error
    finally:
        await fills.close()
        await store.close()


async def test_an_untrusted_source_that_lies_is_replaced_and_nothing_leaks(tmp_path):
    store = BlobStore(tmp_path, 1 << 30)
    await store.open()
    fills = FillRegistry(store)
    try:
        data = os.urandom(100_000)
        d = digest_of(data)
        bad = Chunks([data[:50_000], b"x" * 50_000], trusted=False)
        good = Chunks([data[:30_000], data[30_000:]])
        fill = fills.start(d, factory(bad), expected_size=None, source_name="test",
                           fallback=factory(good))
        fd = await fill.open_fd()
        got = b""
        try:
            # What a client would be sent, read at the moment it would be sent.
            async for off, n in fill.spans(0, None):
                assert off == len(got)
                got += os.pread(fd, n, off)
        finally:
            os.close(fd)
        assert got == data                # not one byte of the lie
        await fill.task
        assert fill.stored and fill.source_kind == "upstream"
        assert isinstance(bad.rejected[0], DigestMismatch)
        assert (tmp_path / "blobs").exists() and store.path(d).read_bytes() == data
    finally:
        await fills.close()
        await store.close()
