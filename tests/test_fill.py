"""Fills against sources held in this process (the HTTP paths are in the server
and sibling tests): byte accounting, and untrusted sources failing over."""
from __future__ import annotations

import asyncio
import contextlib
import os

import pytest

from edgecache.errors import DigestMismatch, SiblingError
from edgecache.pull import fill as fill_module
from edgecache.pull.fills import FillRegistry
from edgecache.store.writer import BlobWriter
from edgecache.reference import digest_of
from edgecache.store.blobs import BlobStore


class Chunks:
    """A source that hands out fixed chunks (pausing `pause` s before each), then
    raises `then` if given, else ends."""

    def __init__(self, chunks: list[bytes], *, trusted: bool = True, size: int | None = None,
                 pause: float = 0.0, then: BaseException | None = None) -> None:
        self.chunks = list(chunks)
        self.size = size if size is not None else sum(len(c) for c in chunks)
        self.trusted = trusted
        self.pause = pause
        self.then = then
        self.rejected: list[BaseException] = []

    async def read(self, n: int = 1 << 20) -> bytes:
        if self.pause:
            await asyncio.sleep(self.pause)
        if self.chunks:
            return self.chunks.pop(0)
        if self.then is not None:
            raise self.then
        return b""

    def reject(self, err: BaseException) -> None:
        self.rejected.append(err)


def factory(src):
    @contextlib.asynccontextmanager
    async def open_source():
        yield src
    return open_source


class Upstream:
    """The fallback: the blob from any offset, recording the offsets asked for."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offsets: list[int] = []

    def __call__(self, offset: int = 0):
        self.offsets.append(offset)
        src = Chunks([self.data[offset:]])
        src.size = len(self.data)
        return factory(src)()


async def client_view(fill) -> tuple[bytes, bool]:
    """What a client would be sent, read when it would be sent; and whether the first
    bytes went out before the blob was verified."""
    fd = await fill.open_fd()
    got, early = b"", None
    try:
        async for off, n in fill.spans(0, None):
            assert off == len(got)
            early = (not fill.verified) if early is None else early
            got += os.pread(fd, n, off)
    finally:
        os.close(fd)
    return got, bool(early)


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
        up = Upstream(data)
        fill = fills.start(d, factory(bad), expected_size=None, source_name="test", fallback=up)
        got, _ = await client_view(fill)
        assert got == data                # not one byte of the lie
        await fill.task
        assert up.offsets == [0]
        assert fill.stored and fill.source_kind == "upstream"
        assert isinstance(bad.rejected[0], DigestMismatch)
        assert (tmp_path / "blobs").exists() and store.path(d).read_bytes() == data
    finally:
        await fills.close()
        await store.close()


@pytest.fixture
async def fills(tmp_path, monkeypatch):
    monkeypatch.setattr(fill_module, "HOLD_LIMIT", 0.2)
    store = BlobStore(tmp_path, 1 << 30)
    await store.open()
    registry = FillRegistry(store)
    yield registry
    await registry.close()
    await store.close()


async def test_a_slow_untrusted_source_is_released_and_finished_from_where_it_broke(fills):
    data = os.urandom(200_000)
    d = digest_of(data)
    # 10 chunks of 10 kB, 0.05 s apart: past the hold limit (0.2 s), then it dies.
    sibling = Chunks([data[i:i + 10_000] for i in range(0, 100_000, 10_000)], trusted=False,
                     size=len(data), pause=0.05, then=SiblingError("n2", "incomplete", "gone"))
    up = Upstream(data)
    fill = fills.start(d, factory(sibling), expected_size=None, source_name="test", fallback=up)
    got, early = await client_view(fill)
    await fill.task
    assert got == data and early          # streamed before the end, and right
    assert up.offsets == [100_000]        # the upstream only for the rest
    assert fill.stored and isinstance(sibling.rejected[0], SiblingError)


async def test_wrong_bytes_after_release_fail_the_fill_and_blame_the_sibling(fills):
    data = os.urandom(200_000)
    d = digest_of(data)
    lie = data[:50_000] + b"x" * 50_000
    sibling = Chunks([lie[i:i + 10_000] for i in range(0, 100_000, 10_000)], trusted=False,
                     size=len(data), pause=0.05, then=SiblingError("n2", "incomplete", "gone"))
    up = Upstream(data)
    fill = fills.start(d, factory(sibling), expected_size=None, source_name="test", fallback=up)
    with pytest.raises(DigestMismatch):
        await client_view(fill)           # the client's response is cut, never completed
    await fill.task
    assert not fill.stored and up.offsets == [100_000]
    assert [type(e) for e in sibling.rejected] == [SiblingError, DigestMismatch]


async def test_a_local_write_error_is_not_blamed_on_the_source_nor_papered_over(fills, monkeypatch):
    """A disk error while copying a released sibling's bytes fails the fill: the
    upstream must not go on from a byte count the file may not match."""
    data = os.urandom(200_000)
    d = digest_of(data)
    sibling = Chunks([data[i:i + 10_000] for i in range(0, 200_000, 10_000)], trusted=False,
                     pause=0.03)
    up = Upstream(data)
    real = BlobWriter._write_sync
    calls = []

    def failing(writer, chunk, offset):
        calls.append(offset)
        if len(calls) == 12:
            fd = os.open(writer.tmp, os.O_WRONLY)          # part of it lands, then the disk fails
            os.pwrite(fd, chunk[:3000], offset)
            os.close(fd)
            raise OSError(5, "Input/output error")
        return real(writer, chunk, offset)

    monkeypatch.setattr(BlobWriter, "_write_sync", failing)
    fill = fills.start(d, factory(sibling), expected_size=None, source_name="test", fallback=up)
    await fill.task
    assert isinstance(fill.error, OSError) and not fill.stored
    assert up.offsets == [] and sibling.rejected == []


async def test_a_206_that_does_not_start_where_asked_is_refused():
    from edgecache.upstream.client import _range_starts_at
    assert _range_starts_at("bytes 100-199/200", 100)
    assert _range_starts_at("bytes 100-199/*", 100)
    assert not _range_starts_at("bytes 0-199/200", 100)
    assert not _range_starts_at("bytes 100-149/200", 100)    # not to the end
    assert not _range_starts_at(None, 100)


async def test_a_sibling_that_lied_about_the_size_is_blamed_after_a_resume(fills):
    data = os.urandom(200_000)
    d = digest_of(data)
    sibling = Chunks([data[i:i + 10_000] for i in range(0, 100_000, 10_000)], trusted=False,
                     size=len(data) + 10, pause=0.05, then=SiblingError("n2", "timeout", "stalled"))
    up = Upstream(data)
    fill = fills.start(d, factory(sibling), expected_size=None, source_name="test", fallback=up)
    await fill.task
    assert not fill.stored and up.offsets == [100_000]
    assert [type(e).__name__ for e in sibling.rejected] == ["SiblingError", "SizeMismatch"]


async def test_a_reader_cancelled_while_waiting_leaves_the_others_be(tmp_path):
    """Readers wait on one shared future: a reader cancelled (its client gone) once
    cancelled it for all of them, and the fill's next notice raised InvalidStateError."""
    store = BlobStore(tmp_path, 1 << 30)
    await store.open()
    fills = FillRegistry(store, abandon_after=60)
    try:
        data = os.urandom(64 * 1024)
        d = digest_of(data)
        fill = fills.start(d, factory(Chunks([data[:1000], data[1000:]], size=None, pause=0.2)),
                           expected_size=None, source_name="test")
        gone = asyncio.create_task(fill.wait_verified())
        stays = asyncio.create_task(fill.wait_verified())
        reader = asyncio.create_task(client_view(fill))
        await asyncio.sleep(0.05)
        gone.cancel()
        assert await stays == len(data)
        assert (await reader)[0] == data
        await fill.task
        assert fill.error is None and fill.stored
    finally:
        await fills.close()
        await store.close()


async def test_a_fill_that_has_stored_its_blob_is_not_joined(tmp_path):
    """Once stored, the blob is the store's (and may be evicted at once): a request
    must not join the finishing fill and open a file that is gone (it was a 500)."""
    store = BlobStore(tmp_path, 1 << 30)
    await store.open()
    fills = FillRegistry(store)
    try:
        data = os.urandom(256 * 1024)
        d = digest_of(data)
        fill = fills.start(d, factory(Chunks([data])), expected_size=None, source_name="test")
        seen_stored = False
        while not fill.task.done():
            if fill.stored:
                seen_stored = True
                assert fills.get(d) is None
                other = fills.start(d, factory(Chunks([data])), expected_size=None,
                                    source_name="test")
                assert other is not fill
                await other.task
            await asyncio.sleep(0)
        assert fill.stored and seen_stored          # the window was there, and checked
    finally:
        await fills.close()
        await store.close()
