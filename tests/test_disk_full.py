"""Disk full during a fill: the clients are still served (relayed from memory),
nothing half-written is kept, and status says the disk is full. The data_dir is a
small tmpfs of the test's own (needs root, as CI has)."""
import asyncio
import json
import os
import subprocess

import aiohttp
import pytest

from edgecache.reference import parse_digest

from tests.conftest import IN_CI
from tests.support.edge import EdgeServer, make_config
from tests.support.faulty import FaultyUpstream
from tests.support.images import make_image

MiB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("mounting a tmpfs needs root")
        pytest.skip("mounting a tmpfs needs root")
    d = tmp_path / "disk"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


async def test_a_fill_that_fills_the_disk_still_serves_its_clients(small_disk):
    img = make_image(95, layers=2, layer_size=6 * MiB)      # far more than the disk holds
    layer = img.layers[0]
    async with FaultyUpstream({"demo/app:v1": img}) as up:
        up.fault("slow", digest=layer.digest, rate=24 * MiB)   # the three clients overlap
        doc = make_config(small_disk / "data", {"central.example": up.url}, default="central.example")
        async with EdgeServer(doc) as edge, aiohttp.ClientSession() as session:
            path = f"/v2/demo/app/blobs/{layer.digest}"
            results = await asyncio.gather(*(edge.get(session, path) for _ in range(3)))
            assert all(s == 200 and body == layer.data for s, _, body in results)
            assert up.count("GET", rf".*/blobs/{layer.digest}") == 1
            tmp = small_disk / "data" / "tmp"
            for _ in range(250):                 # the clients finish on verification; cleanup follows
                if not any(tmp.iterdir()) and not edge.services.blobs.fills.active():
                    break
                await asyncio.sleep(0.02)
            assert list(tmp.iterdir()) == []     # nothing half-written
            assert not edge.services.store.has(parse_digest(layer.digest))
            st = json.loads((await edge.get(session, "/_edgecache/status"))[2])
            assert st["store"]["disk_full"] is True and st["store"]["disk_full_events"] >= 1
            # The next request is served too (from the upstream again: nothing could be cached).
            status, _, body = await edge.get(session, f"/v2/demo/app/blobs/{img.layers[1].digest}")
            assert status == 200 and body == img.layers[1].data


async def test_disk_full_while_a_siblings_bytes_are_held_goes_to_the_upstream(small_disk, tmp_path):
    """Held sibling bytes cannot be relayed from memory (clients wait for the verified
    whole): the fill starts over from the upstream, which can be."""
    from tests.support.fakesibling import FakeSibling
    img = make_image(96, layers=1, layer_size=6 * MiB)
    layer = img.layers[0]
    async with FaultyUpstream({"demo/app:v1": img}) as up, \
            FakeSibling("fake", {layer.digest: layer.data}) as fake:
        doc = make_config(small_disk / "data", {"central.example": up.url}, default="central.example")
        doc["siblings"] = {"mdns": False, "node_id": "n0", "peers": [fake.url],
                           "health_interval": "0.2s", "readmit_after": 1}
        async with EdgeServer(doc) as edge, aiohttp.ClientSession() as session:
            for _ in range(100):
                if edge.services.siblings.live():
                    break
                await asyncio.sleep(0.05)
            status, _, body = await edge.get(session, f"/v2/demo/app/blobs/{layer.digest}")
            assert status == 200 and body == layer.data
            assert fake.counts["get"] == 1
            assert up.count("GET", rf".*/blobs/{layer.digest}") == 1


def fill_up(disk):
    """Write a file until the disk is full; its path."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


async def test_a_store_closes_on_a_full_disk_and_reopens_whole(small_disk):
    """Index changes that cannot be written at close are logged, not raised (the app's
    shutdown went on failing there); the next start reconciles with the files."""
    from edgecache.reference import digest_of
    from edgecache.store.blobs import BlobStore
    store = BlobStore(small_disk / "data", 1 << 30)
    await store.open()
    data = os.urandom(256 * 1024)
    d = digest_of(data)
    await store.put_bytes(d, data)
    filler = fill_up(small_disk)
    store.touch(d)                          # a change queued for the index
    await store.close()                     # must not raise
    filler.unlink()
    again = BlobStore(small_disk / "data", 1 << 30)
    await again.open()
    try:
        assert again.has(d) and again.path(d).read_bytes() == data
    finally:
        await again.close()


async def test_the_periodic_index_flush_survives_a_full_disk(small_disk, caplog):
    """A failed flush used to end the flusher for good, silently."""
    from edgecache.reference import digest_of
    from edgecache.store.blobs import BlobStore
    store = BlobStore(small_disk / "data", 1 << 30)
    await store.open(flush_interval=0.1)
    try:
        data = os.urandom(64 * 1024)
        d = digest_of(data)
        await store.put_bytes(d, data)
        filler = fill_up(small_disk)
        with caplog.at_level("WARNING", logger="edgecache.store"):
            for _ in range(20):
                store.touch(d)                  # a change queued for the index, every time
                await asyncio.sleep(0.1)
                if store.stats.flush_errors >= 2:
                    break
        assert store.stats.flush_errors >= 2, "the flusher stopped after one failure"
        assert store.stats.last_flush_error and store.stats.disk_full >= 1
        assert any("index not written" in r.getMessage() for r in caplog.records)
        filler.unlink()
        failed = store.stats.flush_errors
        await asyncio.sleep(0.5)                # the next flushes succeed
        store.touch(d)
        await asyncio.sleep(0.3)
        assert store.stats.flush_errors == failed
        assert not store._flusher.done()
    finally:
        await store.close()
