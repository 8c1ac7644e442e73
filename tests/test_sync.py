"""Pinned and prefetch lists synced by the daemon, against the fault-injecting upstream."""
import asyncio
import json

import aiohttp

from edgecache.reference import parse_digest
from edgecache.server.app import BACKGROUND_SYNC
from tests.support.eventually import eventually
from tests.support.edge import EdgeServer, make_config
from tests.support.faulty import FaultyUpstream
from tests.support.images import make_image, make_index

MiB = 1024 * 1024
HOST = "central.example"


def write_list(path, *refs):
    path.write_text("images:\n" + "".join(f"  - {r}\n" for r in refs))


async def start_edge(tmp_path, up, **extra):
    doc = make_config(tmp_path / "data", {HOST: up.url}, default=HOST, **extra)
    edge = EdgeServer(doc)
    edge.app[BACKGROUND_SYNC] = False         # the tests drive the syncer themselves
    return await edge.start()


def blobs_of(img):
    return [b.digest for b in img.blobs]


def has(edge, digest):
    return edge.services.store.has(parse_digest(digest))


async def test_pinned_set_is_fetched_whole_with_the_platform_filter_and_survives_lru(tmp_path, caplog):
    caplog.set_level("INFO", logger="edgecache.store")
    idx = make_index(31, arches=("amd64", "arm64"), layer_size=256 * 1024)
    by_digest = make_image(32, layer_size=256 * 1024)
    filler = make_image(33, layers=4, layer_size=1 * MiB)
    async with FaultyUpstream({"pos/app:v1": idx, "pos/tool:v1": by_digest, "other/big:v1": filler}) as up:
        pinned = tmp_path / "pinned.yaml"
        write_list(pinned, f"{HOST}/pos/tool@{by_digest.digest}")
        pinned.write_text(pinned.read_text() + f"  - ref: {HOST}/pos/app:v1\n    platforms: [linux/arm64]\n")
        edge = await start_edge(tmp_path, up, pinned=str(pinned), cache={"max_size": 3 * MiB})
        try:
            result = await edge.services.syncer.sync()
            assert result["pinned"] == {"desired": 2, "complete": 2, "failed": 0, "fetching": 0, "pending": 0}
            arm, amd = idx.images[1], idx.images[0]
            for d in [idx.digest, arm.digest, *blobs_of(arm), by_digest.digest, *blobs_of(by_digest)]:
                assert has(edge, d) and edge.services.store.is_pinned(parse_digest(d)), d
            for d in blobs_of(amd):                     # the platform filter left amd64 out
                assert not has(edge, d)
            # Pull far more than max_size of other content: the pinned blobs all stay.
            async with aiohttp.ClientSession() as s:
                for b in filler.layers:
                    assert (await edge.get(s, f"/v2/other/big/blobs/{b.digest}"))[0] == 200
                    await edge.stored(b.digest)
            assert await eventually(lambda: edge.services.store.stats.evictions > 0, 2)
            assert await eventually(lambda: "eviction: " in caplog.text, 2)
            for d in [idx.digest, *blobs_of(arm), *blobs_of(by_digest)]:
                assert has(edge, d), d
            st = edge.services.syncer.status()
            assert st["totals"]["bytes_pinned"] == edge.services.store.index.pinned_bytes > 0
        finally:
            await edge.stop()


async def test_an_unchanged_tag_costs_heads_only_and_shared_blobs_are_fetched_once(tmp_path):
    a = make_image(34, layers=2, layer_size=128 * 1024)
    async with FaultyUpstream({"pos/a:v1": a, "pos/b:v1": a}) as up:   # the same image twice
        pinned = tmp_path / "pinned.yaml"
        write_list(pinned, f"{HOST}/pos/a:v1", f"{HOST}/pos/b:v1")
        edge = await start_edge(tmp_path, up, pinned=str(pinned))
        try:
            await edge.services.syncer.sync()
            for blob in a.blobs:                        # shared blobs: fetched once
                assert up.count("GET", rf"/v2/pos/[ab]/blobs/{blob.digest}") == 1
            up.reset_counts()
            await edge.services.syncer.sync()
            # The tag, then its supply chain (signatures and attestations by default): an
            # upstream without the referrers API is asked the tag schema's tag and cosign's
            # .sig and .att tags, a HEAD each, none there.
            chain = [f"/v2/pos/{r}/manifests/sha256-{a.digest[7:]}{s}"
                     for r in "ab" for s in ("", ".att", ".sig")]
            assert sorted(up.log) == sorted([("HEAD", "/v2/pos/a/manifests/v1"),
                                             ("HEAD", "/v2/pos/b/manifests/v1"),
                                             *(("HEAD", p) for p in chain)])
        finally:
            await edge.stop()


async def test_a_moved_tag_switches_only_after_the_new_image_is_complete(tmp_path):
    old = make_image(35, layers=1, layer_size=256 * 1024)
    new = make_image(36, layers=2, layer_size=1 * MiB)
    async with FaultyUpstream({"pos/app:v1": old}) as up:
        pinned = tmp_path / "pinned.yaml"
        write_list(pinned, f"{HOST}/pos/app:v1")
        edge = await start_edge(tmp_path, up, pinned=str(pinned), tag_ttl="0s",
                                sync={"retention": "1h"})
        syncer = edge.services.syncer
        try:
            await syncer.sync()
            up.add("pos/app:v1", new)
            up.fault("slow", digest=new.layers[1].digest, rate=2 * MiB)      # ~0.5 s
            run = syncer.sync()
            async with aiohttp.ClientSession() as s:
                seen = []
                while not run.done():
                    status, h, _ = await edge.get(s, "/v2/pos/app/manifests/v1")
                    seen.append(h["Docker-Content-Digest"])
                    if h["Docker-Content-Digest"] == new.digest:
                        assert all(has(edge, d) for d in blobs_of(new))   # never before complete
                    await asyncio.sleep(0.05)
                assert old.digest in seen
                status, h, _ = await edge.get(s, "/v2/pos/app/manifests/v1")
                assert h["Docker-Content-Digest"] == new.digest
            # The old image stays pinned for the retention period, then is ordinary LRU content.
            store = edge.services.store
            assert all(store.is_pinned(parse_digest(d)) for d in blobs_of(old))
            assert await syncer.expire_retained() == 0
            import time
            assert await syncer.expire_retained(now=time.time() + 3601) == 1
            assert not any(store.is_pinned(parse_digest(d)) for d in blobs_of(old))
            assert all(store.is_pinned(parse_digest(d)) for d in blobs_of(new))
        finally:
            await edge.stop()


async def test_a_failed_sync_keeps_the_old_state(tmp_path):
    old = make_image(37, layer_size=64 * 1024)
    new = make_image(38, layer_size=64 * 1024)
    async with FaultyUpstream({"pos/app:v1": old}) as up:
        pinned = tmp_path / "pinned.yaml"
        write_list(pinned, f"{HOST}/pos/app:v1")
        edge = await start_edge(tmp_path, up, pinned=str(pinned), tag_ttl="0s")
        syncer = edge.services.syncer
        try:
            await syncer.sync()
            up.add("pos/app:v1", new)
            up.fault("truncate", digest=new.layers[0].digest)
            result = await syncer.sync()
            assert result["pinned"]["failed"] == 1
            entry = syncer.status()["entries"][0]
            assert entry["state"] == "failed"
            assert "SizeMismatch" in entry["reason"] or "Incomplete" in entry["reason"]
            async with aiohttp.ClientSession() as s:
                _, h, _ = await edge.get(s, "/v2/pos/app/manifests/v1")
            assert h["Docker-Content-Digest"] == old.digest
            assert not edge.services.store.is_pinned(parse_digest(new.layers[0].digest))
        finally:
            await edge.stop()


async def test_list_problems_are_reported_and_the_rest_still_syncs(tmp_path):
    good = make_image(39, layer_size=64 * 1024)
    async with FaultyUpstream({"pos/good:v1": good}) as up:
        lists = tmp_path / "lists"
        lists.mkdir()
        (lists / "a.yaml").write_text(f"images:\n  - {HOST}/pos/good:v1\n  - not a ref!\n"
                                      "  - unknown.example/x:1\n")
        edge = await start_edge(tmp_path, up, pinned=str(lists))
        syncer = edge.services.syncer
        try:
            result = await syncer.sync()
            assert result["pinned"]["complete"] == 1
            problems = syncer.status()["problems"]
            assert any(p.startswith(f"{lists / 'a.yaml'}:3:") for p in problems)
            assert any(p.startswith(f"{lists / 'a.yaml'}:4:") and "unknown.example" in p for p in problems)
            # The file stops parsing: its entries (and pins) are kept, the problem reported.
            (lists / "a.yaml").write_text("images:\n  - [unclosed\n")
            await syncer.reload()
            assert len(syncer.desired["pinned"]) == 1
            assert any("does not parse" in p for p in syncer.status()["problems"])
            assert all(edge.services.store.is_pinned(parse_digest(d)) for d in blobs_of(good))
        finally:
            await edge.stop()


async def test_prefetch_is_fetched_but_evictable_and_answers_offline(tmp_path):
    img = make_image(40, layer_size=64 * 1024)
    async with FaultyUpstream({"pos/pre:v1": img}) as up:
        prefetch = tmp_path / "prefetch.yaml"
        write_list(prefetch, f"{HOST}/pos/pre:v1")
        edge = await start_edge(tmp_path, up, prefetch=str(prefetch))
        try:
            result = await edge.services.syncer.sync()
            assert result["prefetch"]["complete"] == 1
            assert all(has(edge, d) and not edge.services.store.is_pinned(parse_digest(d))
                       for d in blobs_of(img))
            await up.stop()
            async with aiohttp.ClientSession() as s:
                status, h, _ = await edge.get(s, "/v2/pos/pre/manifests/v1",
                                              headers={"Accept": img.media_type})
                assert status == 200 and h["Docker-Content-Digest"] == img.digest
        finally:
            await edge.stop()


async def test_status_and_metrics_show_the_entries(tmp_path):
    img = make_image(41, layer_size=64 * 1024)
    async with FaultyUpstream({"pos/app:v1": img}) as up:
        pinned = tmp_path / "pinned.yaml"
        write_list(pinned, f"{HOST}/pos/app:v1", f"{HOST}/pos/missing:v1")
        edge = await start_edge(tmp_path, up, pinned=str(pinned))
        try:
            await edge.services.syncer.sync()
            async with aiohttp.ClientSession() as s:
                st = json.loads((await edge.get(s, "/_edgecache/status"))[2])
                m = (await edge.get(s, "/metrics"))[2].decode()
            assert st["sync"]["totals"]["pinned"]["desired"] == 2
            assert st["sync"]["totals"]["pinned"]["failed"] == 1
            states = {e["ref"]: e["state"] for e in st["sync"]["entries"]}
            assert states == {f"{HOST}/pos/app:v1": "complete", f"{HOST}/pos/missing:v1": "failed"}
            assert 'edgecache_sync_entries{list="pinned",state="complete"} 1.0' in m
            assert 'edgecache_sync_entries{list="pinned",state="failed"} 1.0' in m
        finally:
            await edge.stop()


async def test_a_tag_pinned_for_two_platforms_switches_only_when_both_are_complete(tmp_path):
    old = make_index(42, arches=("amd64", "arm64"), layer_size=64 * 1024)
    new = make_index(43, arches=("amd64", "arm64"), layer_size=64 * 1024)
    async with FaultyUpstream({"pos/app:v1": old}) as up:
        pinned = tmp_path / "pinned.yaml"
        pinned.write_text(f"images:\n  - ref: {HOST}/pos/app:v1\n    platforms: [linux/amd64]\n"
                          f"  - ref: {HOST}/pos/app:v1\n    platforms: [linux/arm64]\n")
        edge = await start_edge(tmp_path, up, pinned=str(pinned))
        syncer = edge.services.syncer
        key = (HOST, "pos/app", "v1")
        try:
            await syncer.sync()
            assert syncer.pinned_tag(key) == old.digest
            up.add("pos/app:v1", new)
            up.fault("truncate", digest=new.images[1].layers[0].digest)      # arm64 fails
            result = await syncer.sync()
            assert result["pinned"]["complete"] == 1 and result["pinned"]["failed"] == 1
            assert syncer.pinned_tag(key) == old.digest                    # not half switched
            up.clear_faults()
            await syncer.sync()
            assert syncer.pinned_tag(key) == new.digest
            # Removing one of the two entries keeps the tag for the other.
            pinned.write_text(f"images:\n  - ref: {HOST}/pos/app:v1\n    platforms: [linux/arm64]\n")
            await syncer.reload()
            assert syncer.pinned_tag(key) == new.digest
        finally:
            await edge.stop()


async def test_pins_of_a_sync_stopped_mid_fetch_are_released_at_the_next_start(tmp_path):
    img = make_image(44, layers=2, layer_size=1 * MiB)
    async with FaultyUpstream({"pos/app:v1": img}) as up:
        pinned = tmp_path / "pinned.yaml"
        write_list(pinned, f"{HOST}/pos/app:v1")
        up.fault("stall", digest=img.layers[1].digest, seconds=30)
        edge = await start_edge(tmp_path, up, pinned=str(pinned))
        run = edge.services.syncer.sync()
        for _ in range(100):
            if edge.services.store.index.pinned_bytes or edge.services.store.index.owners():
                break
            await asyncio.sleep(0.02)
        assert edge.services.store.index.owners()           # pinned before the blobs landed
        await edge.stop()                                   # the daemon stops mid-fetch
        assert run.done()
        write_list(pinned)                                  # and the entry is gone meanwhile
        up.clear_faults()
        edge = await start_edge(tmp_path, up, pinned=str(pinned))
        try:
            assert edge.services.store.index.owners() == set()
            assert edge.services.store.index.pinned_bytes == 0
        finally:
            await edge.stop()


async def test_a_list_that_is_not_utf8_is_a_problem_not_a_crash(tmp_path):
    img = make_image(45, layer_size=1024)
    async with FaultyUpstream({"pos/app:v1": img}) as up:
        pinned = tmp_path / "pinned.yaml"
        pinned.write_bytes(b"# Caf\xe9\nimages:\n  - " + f"{HOST}/pos/app:v1\n".encode())
        edge = await start_edge(tmp_path, up, pinned=str(pinned))
        try:
            problems = edge.services.syncer.status()["problems"]
            assert len(problems) == 1 and "not UTF-8" in problems[0]
        finally:
            await edge.stop()
