import asyncio
import hashlib
import os

import pytest

from edgecache.errors import DigestMismatch, SizeMismatch
from edgecache.reference import digest_of
from edgecache.store import layout
from edgecache.store.blobs import BlobStore
from tests.support.eventually import eventually


async def put(store, data):
    d = digest_of(data)
    await store.put_bytes(d, data)
    return d


async def under(s, limit, timeout=3.0):
    """Wait for the store's evictor to bring the budgeted bytes to <= limit."""
    return await eventually(lambda: s.budgeted_bytes() <= limit and not s.evicting,
                            timeout, 0.01)


async def opened(tmp_path, max_size=10_000, **kw):
    s = BlobStore(tmp_path, max_size, **kw)
    await s.open(flush_interval=3600)
    return s


def test_layout_is_a_pure_function(tmp_path):
    d = digest_of(b"x")
    p = layout.blob_path(tmp_path, d)
    assert p == tmp_path / "blobs" / "sha256" / d.hex[:2] / d.hex
    assert layout.digest_from_path(p) == d
    assert layout.digest_from_path(tmp_path / "blobs" / "sha256" / "zz" / d.hex) is None


async def test_one_copy_per_digest_written_through_temp(tmp_path):
    s = await opened(tmp_path)
    d = await put(s, b"hello")
    await put(s, b"hello")
    assert s.path(d).read_bytes() == b"hello" and len(s.index) == 1
    assert list(layout.tmp_dir(tmp_path).iterdir()) == []
    await s.close()


async def test_commit_refuses_wrong_bytes_and_removes_the_temp_file(tmp_path):
    s = await opened(tmp_path)
    tmp = s.temp_path()
    tmp.write_bytes(b"abc")
    d = digest_of(b"abd")
    with pytest.raises(DigestMismatch):
        await s.commit(tmp, d, size=3, computed=hashlib.sha256(b"abc").hexdigest(), written=3)
    assert not tmp.exists() and not s.has(d) and not s.path(d).exists()
    tmp.write_bytes(b"ab")
    with pytest.raises(SizeMismatch):
        await s.commit(tmp, d, size=3, computed=d.hex, written=2)
    assert not tmp.exists()
    await s.close()


async def test_lru_evicts_least_recently_used_between_watermarks(tmp_path):
    s = await opened(tmp_path, max_size=1000, high_watermark=0.9, low_watermark=0.5)
    ds = [await put(s, bytes([i]) * 200) for i in range(4)]     # 800 bytes, under 900
    s.touch(ds[0])                                             # 0 is now the most recent
    ds.append(await put(s, b"\x09" * 200))                     # 1000 > 900: evict to <= 500
    assert await under(s, s.low)
    assert [s.has(d) for d in ds] == [True, False, False, False, True]
    assert s.index.unpinned_bytes == 400
    assert s.stats.evictions == 3 and not s.path(ds[1]).exists()
    await s.close()


async def test_pinned_and_leased_blobs_are_never_evicted(tmp_path):
    s = await opened(tmp_path, max_size=1000, high_watermark=0.5, low_watermark=0.1)
    a = await put(s, b"a" * 300)
    await s.pin(a, "pinned-set")
    b = await put(s, b"b" * 300)
    with s.lease(b):
        await s.evict_to(0)
        assert s.has(a) and s.has(b)
    await s.evict_to(0)
    assert s.has(a) and not s.has(b)
    assert s.index.pinned_bytes == 300 and s.index.unpinned_bytes == 0
    await s.unpin(a, "pinned-set")
    await s.evict_to(0)
    assert not s.has(a)
    await s.close()


async def test_a_pin_with_two_owners_holds_until_both_let_go(tmp_path):
    s = await opened(tmp_path)
    a = await put(s, b"a" * 10)
    await s.pin(a, "x"); await s.pin(a, "y"); await s.unpin(a, "x")
    assert s.is_pinned(a)
    await s.unpin(a, "y")
    assert not s.is_pinned(a)
    await s.close()


async def test_index_survives_a_clean_restart_without_walking_the_files(tmp_path, monkeypatch):
    s = await opened(tmp_path)
    a = await put(s, b"a" * 10)
    b = await put(s, b"b" * 10)
    await s.pin(b, "p")
    s.touch(a)
    await s.close()
    walked = []
    real_walk = os.walk
    monkeypatch.setattr(os, "walk", lambda *a, **k: walked.append(a) or real_walk(*a, **k))
    s2 = await opened(tmp_path)
    assert walked == []
    assert s2.has(a) and s2.has(b) and s2.is_pinned(b)
    assert [d for d, _ in s2.index.oldest_first()] == [str(b), str(a)]   # a was touched last
    await s2.close()


async def test_after_a_crash_index_and_files_are_reconciled(tmp_path):
    s = await opened(tmp_path)
    a = await put(s, b"a" * 10)
    b = await put(s, b"b" * 10)
    await s.flush()
    # Crash: no clean close. Meanwhile a file vanished, an orphan appeared, a temp file was left.
    s.path(a).unlink()
    orphan = digest_of(b"orphan")
    layout.blob_path(tmp_path, orphan).parent.mkdir(parents=True, exist_ok=True)
    layout.blob_path(tmp_path, orphan).write_bytes(b"orphan")
    (layout.tmp_dir(tmp_path) / "dead.part").write_bytes(b"partial")
    s._index_io.shutdown(wait=True)   # abandon it like a killed process would ...
    os.close(s._lock_fd)              # ... whose lock the kernel drops
    s2 = await opened(tmp_path)
    assert not s2.has(a) and s2.has(b) and s2.has(orphan)
    assert s2.size(orphan) == 6
    assert list(layout.tmp_dir(tmp_path).iterdir()) == []
    assert s2.stats.repaired_missing_files == 1 and s2.stats.repaired_orphan_files == 1
    await s2.close()


async def test_one_process_owns_a_data_dir(tmp_path):
    from edgecache.errors import StoreLocked
    s = await opened(tmp_path)
    with pytest.raises(StoreLocked):
        await opened(tmp_path)
    await s.close()
    s2 = await opened(tmp_path)        # released on close
    await s2.close()


async def test_verify_quarantines_a_corrupted_blob(tmp_path):
    s = await opened(tmp_path)
    a = await put(s, b"good bytes")
    b = await put(s, b"other bytes")
    s.path(b).write_bytes(b"otHer bytes")
    report = await s.verify()
    assert report.checked == 2 and report.bad == [str(b)]
    assert s.has(a) and not s.has(b) and not s.path(b).exists()
    assert list((tmp_path / "quarantine").iterdir())
    await s.close()


async def test_commits_during_an_eviction_are_evicted_too(tmp_path):
    s = await opened(tmp_path, max_size=10_000, high_watermark=0.5, low_watermark=0.2)
    # Many commits while the evictor runs: each one over the high watermark; the store
    # ends under the low one, not wherever the first pass happened to stop.
    await asyncio.gather(*(put(s, i.to_bytes(2, "big") * 250) for i in range(60)))
    assert await under(s, s.low)
    assert s.index.unpinned_bytes <= 2000
    await s.close()


async def test_a_store_over_a_smaller_budget_is_evicted_at_start_and_periodically(tmp_path):
    s = await opened(tmp_path, max_size=100_000)
    for i in range(10):
        await put(s, bytes([i]) * 1000)
    await s.close()
    s = BlobStore(tmp_path, 5000, high_watermark=0.9, low_watermark=0.5, evict_interval=0.2)
    await s.open(flush_interval=3600)
    assert await under(s, 2500)                     # at start: nobody committed anything
    # Bytes that arrive around the store (the index mended by hand, a reload) are
    # found by the periodic check.
    s.index.add(str(digest_of(b"z" * 4000)), 4000)
    await asyncio.sleep(0)
    assert s.budgeted_bytes() > s.high and await under(s, 2500, timeout=2.0)
    await s.close()


async def test_bytes_in_flight_count_against_the_budget(tmp_path):
    s = await opened(tmp_path, max_size=10_000, high_watermark=0.9, low_watermark=0.5)
    ds = [await put(s, bytes([i]) * 2000) for i in range(4)]        # 8000: under 9000
    fill = object()
    s.reserve(fill, 4000)                  # a fill of 4000 bytes under way: 12000 > 9000
    assert await under(s, 5000)
    assert s.index.unpinned_bytes <= 1000 and s.reserved_bytes == 4000
    assert not s.has(ds[0]) and s.stats.evictions >= 3
    s.release(fill)
    assert s.reserved_bytes == 0 and s.budgeted_bytes() == s.index.unpinned_bytes
    await s.close()


async def test_a_committed_fill_is_counted_once(tmp_path):
    s = await opened(tmp_path, max_size=10_000, high_watermark=0.95, low_watermark=0.5)
    ds = [await put(s, bytes([i]) * 2000) for i in range(4)]        # 8000
    fill = object()
    s.reserve(fill, 1000)                                           # 9000: under 9500
    data = b"f" * 1000
    tmp = s.temp_path()
    tmp.write_bytes(data)
    d = digest_of(data)
    await s.commit(tmp, d, size=1000, computed=d.hex, written=1000, reserved_by=fill)
    await asyncio.sleep(0.1)
    assert s.reserved_bytes == 0 and s.budgeted_bytes() == 9000
    assert all(s.has(x) for x in ds) and s.stats.evictions == 0
    await s.close()
