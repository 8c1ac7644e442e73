"""sync/state.py: state.json as the syncer wrote it before it was typed still reads,
round-trips unchanged in layout, and a damaged record costs only that record."""
import json

from edgecache.sync.state import Retained, SyncState

OLD = {
    "pinned": {"r.example/app:v1|linux/amd64": {
        "ref": "r.example/app:v1", "platforms": ["linux/amd64"], "digest": "sha256:" + "a" * 64,
        "media_type": "application/vnd.oci.image.index.v1+json",
        "digests": ["sha256:" + "a" * 64, "sha256:" + "b" * 64], "size": 1234,
        "owner": "pinned:r.example/app:v1|linux/amd64@sha256:" + "a" * 64,
        "tag": ["r.example", "app", "v1"], "synced": 1700000000.5}},
    "prefetch": {"r.example/tool@sha256:cc|": {
        "ref": "r.example/tool@sha256:" + "c" * 64, "platforms": [], "digest": "sha256:" + "c" * 64,
        "media_type": "x", "digests": ["sha256:" + "c" * 64], "size": 5,
        "owner": "prefetch:x@sha256:" + "c" * 64, "tag": None, "synced": 1.0}},
    "retained": [{"owner": "pinned:old@sha256:" + "d" * 64, "digests": ["sha256:" + "d" * 64],
                  "until": 1700086400.0}],
}


def test_the_untyped_layout_reads_and_round_trips():
    state = SyncState.from_json(json.dumps(OLD))
    img = state.images["pinned"]["r.example/app:v1|linux/amd64"]
    assert img.tag == ("r.example", "app", "v1") and img.size == 1234
    assert state.retained == [Retained(OLD["retained"][0]["owner"], OLD["retained"][0]["digests"],
                                       1700086400.0)]
    # The old keys as they were; the supply chain's (later) added with their defaults.
    written = json.loads(state.to_json())
    assert written.pop("last_success") == {}
    for kind in ("pinned", "prefetch"):
        for rec in written[kind].values():
            assert (rec.pop("supply"), rec.pop("referrers")) == ([], 0)
    assert written == OLD
    assert state.owners() == {img.owner, OLD["retained"][0]["owner"]}


def test_a_damaged_record_is_skipped_and_the_rest_kept(caplog):
    doc = json.loads(json.dumps(OLD))
    doc["pinned"]["broken"] = {"ref": "x"}                 # no digest, digests, owner
    doc["retained"].append({"owner": "o"})
    state = SyncState.from_json(json.dumps(doc))
    assert set(state.images["pinned"]) == {"r.example/app:v1|linux/amd64"}
    assert len(state.retained) == 1 and "broken" in caplog.text


def test_older_records_without_the_later_fields_get_defaults():
    doc = {"pinned": {"k": {"digest": "sha256:" + "a" * 64, "digests": [], "owner": "o"}}}
    img = SyncState.from_json(json.dumps(doc)).images["pinned"]["k"]
    assert (img.media_type, img.size, img.tag, img.platforms) == ("", 0, None, [])


def test_a_key_from_another_version_is_ignored_not_the_record():
    """A downgrade: a record with a key this version does not know keeps its image
    (skipped, its pins would be released as orphans at start)."""
    doc = json.loads(json.dumps(OLD))
    doc["pinned"]["r.example/app:v1|linux/amd64"]["referrers"] = ["sha256:" + "e" * 64]
    doc["retained"][0]["reason"] = "moved"
    state = SyncState.from_json(json.dumps(doc))
    assert len(state.images["pinned"]) == 1 and len(state.retained) == 1
    assert state.owners() == SyncState.from_json(json.dumps(OLD)).owners()
