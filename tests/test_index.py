"""store/index.py: the blob index's LRU order, byte counts and pins, in memory and
across a reopen (diskcache on a real directory)."""
from edgecache.store.index import BlobIndex

A, B, C = ("sha256:" + c * 64 for c in "abc")


def test_lru_order_follows_use_and_counts_follow_adds_and_removes(tmp_path):
    ix = BlobIndex(tmp_path / "ix")
    assert ix.load() is False                      # a new index: not a clean shutdown
    ix.add(A, 10, atime=1)
    ix.add(B, 20, atime=2)
    ix.add(C, 30, atime=3)
    ix.touch(A)                                    # used: now the most recent
    assert [d for d, _ in ix.oldest_first()] == [B, C, A]
    assert (len(ix), ix.total_bytes, ix.size(B)) == (3, 60, 20)
    ix.remove(B)
    ix.remove(B)                                   # twice: no double count
    assert (len(ix), ix.total_bytes, B in ix, ix.size(B)) == (2, 40, False, None)
    ix.close()


def test_pins_by_owner_count_once_and_survive_until_the_last_owner(tmp_path):
    ix = BlobIndex(tmp_path / "ix")
    ix.load()
    ix.add(A, 100)
    ix.pin(A, "pinned:x")
    ix.pin(A, "pinned:y")
    ix.pin(B, "pinned:x")                          # not stored yet: pinned once it lands
    assert (ix.pinned_bytes, ix.unpinned_bytes) == (100, 0)
    ix.add(B, 50)
    assert ix.pinned_bytes == 150 and ix.pins(A) == {"pinned:x", "pinned:y"}
    ix.unpin(A, "pinned:x")
    assert ix.is_pinned(A) and ix.pinned_bytes == 150
    ix.unpin(A, "pinned:y")
    assert not ix.is_pinned(A) and (ix.pinned_bytes, ix.unpinned_bytes) == (50, 100)
    assert ix.owners() == {"pinned:x"}
    ix.close()


def test_records_and_a_clean_shutdown_survive_a_reopen(tmp_path):
    ix = BlobIndex(tmp_path / "ix")
    ix.load()
    ix.add(A, 10, atime=5)
    ix.add(B, 20, atime=1)
    ix.pin(B, "pinned:z")
    ix.close()
    again = BlobIndex(tmp_path / "ix")
    assert again.load() is True                    # closed cleanly
    assert [d for d, _ in again.oldest_first()] == [B, A]       # by last use
    assert (again.total_bytes, again.pinned_bytes, again.pins(B)) == (30, 20, {"pinned:z"})
    again.flush()
    # Not closed: the next open must assume a crash (and the store reconciles).
    crashed = BlobIndex(tmp_path / "ix")
    assert crashed.load() is False and len(crashed) == 2
    crashed.close()
