"""Repository links in the store: made at commit, kept across restarts, dropped with
their blob, pruned when dangling links pile up; what a manifest names; and the
upgrade of a data_dir written before links."""
import json
from pathlib import Path

from edgecache.config import UpstreamConfig
from edgecache.pull.links import children
from edgecache.reference import digest_of
from edgecache.store import links as links_mod
from edgecache.store.blobs import BlobStore
from edgecache.store.meta import ManifestRecord, MetaStore, TagRecord
from edgecache.upgrade import derive_links

PUB, PRIV = ("pub.example", "demo/app"), ("priv.example", "team/secret")


async def opened(tmp_path, max_size=10_000):
    s = BlobStore(tmp_path, max_size, high_watermark=0.9, low_watermark=0.5)
    await s.open(flush_interval=3600)
    return s


def test_children_are_what_a_manifest_names():
    index = {"manifests": [{"digest": "sha256:" + "1" * 64}, {"digest": "sha256:" + "2" * 64}],
             "subject": {"digest": "sha256:" + "9" * 64}}
    manifest = {"config": {"digest": "sha256:" + "3" * 64},
                "layers": [{"digest": "sha256:" + "4" * 64}, {"digest": "sha256:" + "4" * 64}]}
    schema1 = {"fsLayers": [{"blobSum": "sha256:" + "5" * 64}]}
    # Not the subject: a referrer may name any manifest as its subject.
    assert children(json.dumps(index).encode()) == ["sha256:" + "1" * 64, "sha256:" + "2" * 64]
    assert children(json.dumps(manifest).encode()) == ["sha256:" + "4" * 64, "sha256:" + "3" * 64]
    assert children(json.dumps(schema1).encode()) == ["sha256:" + "5" * 64]
    for junk in (b"", b"[1]", b"{", b'{"layers": "x", "config": 3}'):
        assert children(junk) == []


async def test_a_commit_links_its_blob_and_the_link_survives_a_restart_and_goes_with_the_blob(tmp_path):
    s = await opened(tmp_path)
    d = digest_of(b"layer")
    await s.put_bytes(d, b"layer", link=PUB)
    assert s.linked(d, PUB) and not s.linked(d, PRIV) and not s.linked(d, ("pub.example", "other"))
    await s.close()
    s = await opened(tmp_path)
    assert s.linked(d, PUB) and s.links.count == 1
    await s.delete(d)
    assert not s.linked(d, PUB) and s.links.count == 0
    await s.close()
    s = await opened(tmp_path)
    assert not s.linked(d, PUB)
    await s.close()


async def test_eviction_takes_the_links_of_what_it_evicts(tmp_path):
    s = await opened(tmp_path, max_size=100)
    first = digest_of(b"a" * 60)
    await s.put_bytes(first, b"a" * 60, link=PUB)
    await s.put_bytes(digest_of(b"b" * 60), b"b" * 60, link=PUB)      # over the budget
    await s.gc()
    assert not s.has(first) and not s.linked(first, PUB)
    await s.close()


async def test_dangling_links_are_pruned_when_they_pile_up(tmp_path, monkeypatch):
    monkeypatch.setattr(links_mod, "PRUNE_FLOOR", 10)
    s = await opened(tmp_path)
    await s.link([f"sha256:{i:064x}" for i in range(30)], PUB)     # never stored
    pinned = f"sha256:{1:064x}"
    await s.pin(pinned, "pinned:x")
    await s.put_bytes(digest_of(b"kept"), b"kept", link=PUB)       # a commit prunes
    assert s.links.count == 2 and s.linked(pinned, PUB) and s.linked(digest_of(b"kept"), PUB)
    await s.close()
    s = await opened(tmp_path)                                       # a start prunes too
    assert s.links.digests() == [str(digest_of(b"kept"))]
    await s.close()


async def test_an_old_data_dir_gets_links_from_its_tag_and_sync_records(tmp_path):
    """A layer found under a public and a private upstream links to the private one only."""
    s = await opened(tmp_path, max_size=1 << 20)
    meta = MetaStore(tmp_path / "meta")
    meta.load()
    shared, pub_only, priv_only = b"shared layer", b"public layer", b"private layer"
    for data in (shared, pub_only, priv_only):
        await s.put_bytes(digest_of(data), data)
    m_pub = json.dumps({"config": {"digest": str(digest_of(pub_only))},
                        "layers": [{"digest": str(digest_of(shared))}]}).encode()
    m_priv = json.dumps({"config": {"digest": str(digest_of(priv_only))},
                         "layers": [{"digest": str(digest_of(shared))}]}).encode()
    for m in (m_pub, m_priv):
        await s.put_bytes(digest_of(m), m)
        meta.put_manifest(ManifestRecord(str(digest_of(m)), "application/vnd.oci.image.manifest.v1+json",
                                         len(m)))
    meta.put_tag((*PUB, "v1"), "*", TagRecord(str(digest_of(m_pub)), "x", len(m_pub), 1.0))
    state = tmp_path / "sync" / "state.json"
    state.parent.mkdir()
    state.write_text(json.dumps({"pinned": {"k": {"ref": f"{PRIV[0]}/{PRIV[1]}:v2",
                                                  "digests": [str(digest_of(m_priv)),
                                                              str(digest_of(priv_only)),
                                                              str(digest_of(shared))]}}}))
    ups = {PUB[0]: UpstreamConfig(PUB[0], "http://x", public=True),
           PRIV[0]: UpstreamConfig(PRIV[0], "http://y", username="u", password="p", public=False)}
    made = await derive_links(s, meta, Path(state), ups)
    assert made == 5
    assert s.linked(digest_of(m_pub), PUB) and s.linked(digest_of(pub_only), PUB)
    assert not s.linked(digest_of(shared), PUB)                  # found under both: private only
    for d in (m_priv, priv_only, shared):
        assert s.linked(digest_of(d), PRIV)
    await s.close()


async def test_only_a_data_dir_with_blobs_and_no_links_is_upgraded(tmp_path):
    import shutil
    from edgecache.store import layout
    s = await opened(tmp_path)
    assert s.links.upgraded_from is None                 # new: nothing to upgrade
    await s.put_bytes(digest_of(b"x"), b"x", link=PUB)
    await s.close()
    s = await opened(tmp_path)
    assert s.links.upgraded_from is None                 # written by this version
    await s.close()
    shutil.rmtree(layout.links_dir(tmp_path))           # as a data_dir of the version before
    s = await opened(tmp_path)
    assert s.links.upgraded_from == 0 and not s.linked(digest_of(b"x"), PUB)
    await s.close()
    # Opened and closed without deriving (`edgecache gc` with the daemon stopped, a
    # crash mid-start): still to be upgraded at the next start.
    s = await opened(tmp_path)
    assert s.links.upgraded_from == 0
    await s.close()


async def test_a_digest_keeps_its_newest_vouched_routes_and_every_firm_one(tmp_path):
    """Links made on an upstream's word alone are capped per digest (the oldest goes);
    the link made when the content itself came (a private image's) never is."""
    s = await opened(tmp_path)
    d = digest_of(b"base layer")
    await s.put_bytes(d, b"base layer", link=PRIV)
    for i in range(links_mod.MAX_VOUCHED + 5):
        await s.link([d], ("docker.io", f"r{i}"), vouched=True)
    assert len(s.links.owners(str(d))) == links_mod.MAX_VOUCHED + 1 == s.links.count
    assert s.linked(d, PRIV) and not s.linked(d, ("docker.io", "r0"))
    assert s.linked(d, ("docker.io", f"r{links_mod.MAX_VOUCHED + 4}"))
    await s.close()
    s = await opened(tmp_path)
    assert len(s.links.owners(str(d))) == links_mod.MAX_VOUCHED + 1 and s.linked(d, PRIV)
    await s.close()


async def test_one_upstreams_links_never_push_out_anothers(tmp_path):
    s = await opened(tmp_path)
    d = digest_of(b"shared base")
    await s.put_bytes(d, b"shared base", link=PUB)
    await s.link([d], PRIV, vouched=True)             # the private image's, on its HEAD
    for i in range(links_mod.MAX_VOUCHED + 10):       # anyone, through public repositories
        await s.link([d], ("pub.example", f"r{i}"), vouched=True)
    assert s.linked(d, PRIV) and s.linked(d, PUB)
    assert sum(1 for u, _ in s.links.owners(str(d)) if u == "pub.example") == links_mod.MAX_VOUCHED + 1
    await s.close()
