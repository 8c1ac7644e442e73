"""The manifest and tag records (store/meta.py): kept across restarts, and bounded."""
from edgecache.store import meta as meta_module
from edgecache.store.meta import ManifestRecord, MetaStore, TagRecord


def opened(tmp_path, **kw) -> MetaStore:
    m = MetaStore(tmp_path / "meta", **kw)
    m.load()
    return m


def test_records_survive_a_restart(tmp_path):
    m = opened(tmp_path)
    m.put_manifest(ManifestRecord("sha256:a", "application/vnd.oci.image.manifest.v1+json", 10))
    m.put_tag(("u", "r", "v1"), "*", TagRecord("sha256:a", "x", 10, 1.0))
    m.put_tag_list("u", "r", b'{"tags": ["v1"]}')
    m.flush()
    m.close()
    m = opened(tmp_path)
    assert m.manifest("sha256:a").size == 10 and m.tags(("u", "r", "v1"))["*"].digest == "sha256:a"
    assert m.tag_list("u", "r") == b'{"tags": ["v1"]}'
    m.close()


def test_records_of_manifests_no_longer_held_are_dropped_past_the_floor(tmp_path, monkeypatch):
    monkeypatch.setattr(meta_module, "PRUNE_FLOOR", 100)
    m = opened(tmp_path)
    held = {f"sha256:{i}" for i in range(10)}
    for i in range(200):                      # a client asking for ever new manifests
        d = f"sha256:{i}"
        m.put_manifest(ManifestRecord(d, "t", 1))
        m.put_tag(("u", "r", f"t{i}"), "*", TagRecord(d, "t", 1, 1.0))
    assert m.needs_prune(len(held))
    assert m.prune(held.__contains__) == 2 * 190
    assert {r.digest for _, recs in m.all_tags() for r in recs.values()} == held
    assert all(m.manifest(d) for d in held) and m.manifest("sha256:150") is None
    assert not m.needs_prune(len(held))
    m.flush()
    m.close()
    m = opened(tmp_path)                      # gone from disk too
    assert m.manifest("sha256:150") is None and len(m.all_tags()) == 10
    m.close()


def test_many_tags_of_held_manifests_are_not_walked_every_flush(tmp_path, monkeypatch):
    monkeypatch.setattr(meta_module, "PRUNE_FLOOR", 100)
    m = opened(tmp_path)
    m.put_manifest(ManifestRecord("sha256:a", "t", 1))
    for i in range(300):                      # one held manifest under 300 tags
        m.put_tag(("u", "r", f"t{i}"), "*", TagRecord("sha256:a", "t", 1, 1.0))
    assert m.needs_prune(1) and m.prune(lambda d: True) == 0
    assert not m.needs_prune(1)               # until the records double
    m.close()


def test_kept_tag_lists_are_capped_least_recently_seen_first(tmp_path):
    m = opened(tmp_path, tag_lists_bytes=250)
    for i in range(5):
        m.put_tag_list("u", f"r{i}", b"x" * 100)
    assert m.tag_lists_bytes <= 250
    assert [m.tag_list("u", f"r{i}") is not None for i in range(5)] == [False, False, False, True, True]
    m.put_tag_list("u", "r3", b"x" * 100)     # seen again: now the most recent
    m.put_tag_list("u", "r5", b"x" * 100)
    assert m.tag_list("u", "r3") is not None and m.tag_list("u", "r4") is None
    m.close()
