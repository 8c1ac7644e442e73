"""Blobs through the in-process server, against the fault-injecting upstream."""
import asyncio
import os

import aiohttp
import pytest

from edgecache.store import layout
from tests.support.eventually import eventually
from tests.support.edge import EdgeServer, edge_world, make_config
from tests.support.faulty import FaultyUpstream
from tests.support.images import make_image

MiB = 1024 * 1024


@pytest.fixture
async def world(tmp_path):
    async with edge_world(tmp_path, make_image(7, layers=2, layer_size=2 * MiB)) as w:
        yield w


def blob_path(img, i=0):
    return f"/v2/demo/app/blobs/{img.layers[i].digest}"


def gets(up, digest):
    return up.count("GET", rf"/v2/demo/app/blobs/{digest}")


async def test_twenty_concurrent_cold_pulls_hit_the_upstream_once(world):
    up, edge, img, session = world
    layer = img.layers[0]
    up.fault("slow", digest=layer.digest, rate=8 * MiB)      # ~0.25 s: the requests overlap
    results = await asyncio.gather(*(edge.get(session, blob_path(img)) for _ in range(20)))
    assert all(s == 200 and body == layer.data for s, _, body in results)
    assert gets(up, layer.digest) == 1
    assert edge.services.blobs.fills.coalesced == 19
    assert await edge.stored(layer.digest)    # clients finish on verification; the commit follows


def edge_digest(blob):
    from edgecache.reference import parse_digest
    return parse_digest(blob.digest)


@pytest.mark.parametrize("use_sendfile", [True, False])
async def test_bytes_stream_to_clients_before_the_fill_ends(world, use_sendfile):
    up, edge, img, session = world
    edge.services.sender.use_sendfile = use_sendfile
    layer = img.layers[0]
    up.fault("stall", digest=layer.digest, seconds=1.5)      # half the body, then a pause
    async with session.get(edge.url + blob_path(img)) as r:
        assert r.headers["Content-Length"] == str(layer.size)
        # Everything the upstream sent before it stalled reaches the client during the stall.
        first = await asyncio.wait_for(r.content.readexactly(layer.size // 2), timeout=1.0)
        assert first == layer.data[: layer.size // 2]
        # A second client joins mid-fill, with a Range, and is served from the growing file.
        async with session.get(edge.url + blob_path(img), headers={"Range": "bytes=100-199"}) as r2:
            assert r2.status == 206 and await r2.read() == layer.data[100:200]
        rest = await r.read()
    assert first + rest == layer.data
    assert gets(up, layer.digest) == 1


@pytest.mark.parametrize("use_sendfile", [True, False])
@pytest.mark.parametrize("fault", ["truncate", "wrong_bytes"])
async def test_a_bad_fill_aborts_every_client_and_the_next_request_refetches(world, fault, use_sendfile):
    up, edge, img, session = world
    edge.services.sender.use_sendfile = use_sendfile
    layer = img.layers[0]
    up.fault(fault, digest=layer.digest, times=1)

    async def pull():
        try:
            async with session.get(edge.url + blob_path(img)) as r:
                return await r.read()
        except aiohttp.ClientPayloadError:
            return None

    results = await asyncio.gather(*(pull() for _ in range(5)))
    assert results == [None] * 5            # nobody got a complete response with wrong bytes
    assert list(layout.tmp_dir(edge.config.data_dir).iterdir()) == []
    assert not edge.services.store.has(edge_digest(layer))
    metrics = (await edge.get(session, "/metrics"))[2].decode()
    reason = "digest_mismatch" if fault == "wrong_bytes" else "size_mismatch|incomplete"
    assert any(line.startswith("edgecache_fill_failures_total") and any(
        r in line for r in reason.split("|")) and line.endswith(" 1.0") for line in metrics.splitlines())
    status, _, body = await edge.get(session, blob_path(img))
    assert status == 200 and body == layer.data
    assert gets(up, layer.digest) == 2


async def test_the_fill_goes_on_when_its_client_disconnects(world):
    up, edge, img, session = world
    layer = img.layers[1]
    up.fault("slow", digest=layer.digest, rate=4 * MiB)
    async with aiohttp.ClientSession() as s2:
        async with s2.get(edge.url + blob_path(img, 1)) as r:
            await r.content.readexactly(1000)
        # the session closes: the client is gone after 1000 bytes
    assert await edge.stored(layer.digest)
    status, _, body = await edge.get(session, blob_path(img, 1))
    assert status == 200 and body == layer.data and gets(up, layer.digest) == 1


@pytest.mark.parametrize("use_sendfile", [True, False])
async def test_cached_blobs_with_and_without_sendfile(world, use_sendfile):
    up, edge, img, session = world
    edge.services.sender.use_sendfile = use_sendfile
    layer = img.layers[0]
    assert (await edge.get(session, blob_path(img)))[0] == 200
    assert await edge.stored(layer.digest)
    sender = edge.services.sender
    await asyncio.sleep(0.1)
    before = sender.sendfile_bytes, sender.copied_bytes
    status, headers, body = await edge.get(session, blob_path(img))
    assert status == 200 and body == layer.data
    assert headers["Docker-Content-Digest"] == layer.digest
    assert headers["Content-Length"] == str(layer.size)
    # The handler counts after the client has its bytes: give it a moment.
    for _ in range(100):
        if sender.sendfile_bytes + sender.copied_bytes - sum(before) >= layer.size:
            break
        await asyncio.sleep(0.01)
    assert sender.sendfile_bytes - before[0] == (layer.size if use_sendfile else 0)
    assert sender.copied_bytes - before[1] == (0 if use_sendfile else layer.size)
    status, headers, body = await edge.get(session, blob_path(img), headers={"Range": "bytes=-10"})
    assert status == 206 and body == layer.data[-10:]
    assert headers["Content-Range"] == f"bytes {layer.size - 10}-{layer.size - 1}/{layer.size}"
    status, headers, body = await edge.get(session, blob_path(img),
                                           headers={"Range": f"bytes={layer.size}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{layer.size}"
    assert gets(up, layer.digest) == 1


async def test_head_of_a_blob_asks_the_upstream_with_head_only(world):
    up, edge, img, session = world
    layer = img.layers[0]
    async with session.head(edge.url + blob_path(img)) as r:
        assert r.status == 200 and r.headers["Content-Length"] == str(layer.size)
    assert gets(up, layer.digest) == 0 and up.count("HEAD", rf".*/blobs/{layer.digest}") == 1


async def test_unknown_blob_is_blob_unknown(world):
    up, edge, img, session = world
    status, _, body = await edge.get(session, "/v2/demo/app/blobs/sha256:" + "0" * 64)
    assert status == 404 and b"BLOB_UNKNOWN" in body


async def test_upstream_429_is_passed_on(world):
    up, edge, img, session = world
    up.fault("status", digest=img.layers[0].digest, status=429, retry_after=7, times=1)
    status, headers, body = await edge.get(session, blob_path(img))
    assert status == 429 and b"TOOMANYREQUESTS" in body and headers["Retry-After"] == "7"


async def test_no_descriptor_leak_over_many_requests(world):
    up, edge, img, session = world
    await edge.get(session, blob_path(img))
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        await edge.get(session, blob_path(img), headers={"Range": "bytes=0-99"})
        await edge.get(session, blob_path(img))
    assert len(os.listdir("/proc/self/fd")) <= fds + 2


async def test_clients_that_stop_reading_hold_no_sendfile_thread(world):
    up, edge, _, session = world
    img = make_image(8, layers=1, layer_size=32 * MiB)    # far more than socket buffers hold
    up.add("demo/app:big", img)
    layer = img.layers[0]
    assert (await edge.get(session, blob_path(img)))[0] == 200
    assert await edge.stored(layer.digest)
    port = edge.config.listen_port
    stuck = []
    for _ in range(40):      # more than the sendfile pool has threads
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {blob_path(img)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        stuck.append(writer)
    await asyncio.sleep(0.3)
    status, _, body = await asyncio.wait_for(edge.get(session, blob_path(img)), timeout=5)
    assert status == 200 and body == layer.data
    for w in stuck:
        w.close()


async def test_an_upstream_stall_past_the_read_timeout_aborts_and_recovers(world):
    up, edge, img, session = world
    layer = img.layers[0]
    up.fault("stall", digest=layer.digest, seconds=30, times=1)   # read timeout is 5 s
    t0 = asyncio.get_running_loop().time()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with session.get(edge.url + blob_path(img)) as r:
            await r.read()
    assert asyncio.get_running_loop().time() - t0 < 8
    assert list(layout.tmp_dir(edge.config.data_dir).iterdir()) == []
    status, _, body = await edge.get(session, blob_path(img))
    assert status == 200 and body == layer.data
    # Nothing left behind by the stalled fill: no fill task, no fill in the registry.
    assert await eventually(lambda: edge.services.blobs.fills.active() == [], 2)
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("fill ")]


async def test_upstream_500_on_a_blob_is_a_5xx(world):
    up, edge, img, session = world
    up.fault("status", digest=img.layers[0].digest, status=500, times=1)
    status, _, body = await edge.get(session, blob_path(img))
    assert status == 503 and b"UNKNOWN" in body
    assert (await edge.get(session, blob_path(img)))[0] == 200


@pytest.mark.parametrize("use_sendfile", [True, False])
async def test_an_upstream_without_content_length_is_served_with_one(world, use_sendfile):
    up, edge, img, session = world
    edge.services.sender.use_sendfile = use_sendfile
    layer = img.layers[0]
    up.fault("chunked", digest=layer.digest)
    results = await asyncio.gather(*(edge.get(session, blob_path(img)) for _ in range(3)),
                                   edge.get(session, blob_path(img), headers={"Range": "bytes=5-9"}))
    for status, headers, body in results[:3]:
        assert status == 200 and body == layer.data and headers["Content-Length"] == str(layer.size)
    assert results[3][0] == 206 and results[3][2] == layer.data[5:10]
    assert gets(up, layer.digest) == 1


async def test_an_empty_body_for_a_real_digest_is_never_a_complete_response(world):
    up, edge, img, session = world
    layer = img.layers[0]
    up.fault("empty", digest=layer.digest, times=1)
    try:
        status, _, body = await edge.get(session, blob_path(img))
    except aiohttp.ClientError:
        status, body = None, None
    assert (status, body) != (200, b"")
    assert status in (None, 502, 503)
    status, _, body = await edge.get(session, blob_path(img))
    assert status == 200 and body == layer.data


async def test_a_failed_fill_joined_from_another_upstream_is_retried_on_ours(tmp_path):
    img = make_image(7, layers=1, layer_size=64 * 1024)
    layer = img.layers[0]
    async with FaultyUpstream({"demo/app:v1": img}) as good, \
            FaultyUpstream({"demo/app:v1": make_image(99, layer_size=1024)}) as other:
        # The other upstream does not have the blob, and says so slowly.
        other.fault("status", digest=layer.digest, status=404, delay=0.3)
        doc = make_config(tmp_path / "data", {"good.example": good.url, "other.example": other.url},
                          default="good.example")
        async with EdgeServer(doc) as edge, aiohttp.ClientSession() as session:
            first = asyncio.ensure_future(edge.get(session, blob_path(img) + "?ns=other.example"))
            await asyncio.sleep(0.1)                 # the other upstream's fill is under way
            status, _, body = await edge.get(session, blob_path(img) + "?ns=good.example")
            assert status == 200 and body == layer.data
            assert (await first)[0] == 404
            assert gets(good, layer.digest) == 1


async def test_a_blob_corrupted_on_disk_is_found_by_the_scrub_quarantined_and_fetched_again(
        tmp_path, caplog):
    img = make_image(9, layers=1, layer_size=256 * 1024)
    layer = img.layers[0]
    async with FaultyUpstream({"demo/app:v1": img}) as up:
        doc = make_config(tmp_path / "data", {"central.example": up.url}, default="central.example",
                          cache={"scrub_interval": "200ms"})
        async with EdgeServer(doc) as edge, aiohttp.ClientSession() as session:
            assert (await edge.get(session, blob_path(img)))[2] == layer.data
            assert await edge.stored(layer.digest)
            path = edge.services.store.path(edge_digest(layer))
            data = bytearray(path.read_bytes())
            data[1000] ^= 0xFF                       # one bit of rot
            path.write_bytes(bytes(data))
            for _ in range(100):
                if edge.services.store.stats.quarantined:
                    break
                await asyncio.sleep(0.05)
            assert edge.services.store.stats.quarantined == 1 and not path.exists()
            assert f"quarantined {layer.digest}: its bytes do not hash to its name" in caplog.text
            status, _, body = await edge.get(session, blob_path(img))
            assert status == 200 and body == layer.data
            assert gets(up, layer.digest) == 2


@pytest.mark.parametrize("use_sendfile", [True, False])
async def test_a_client_that_stops_reading_is_let_go_after_the_idle_timeout(world, use_sendfile):
    up, edge, _, session = world
    img = make_image(10, layers=1, layer_size=32 * MiB)
    up.add("demo/app:idle", img)
    layer = img.layers[0]
    assert (await edge.get(session, blob_path(img)))[0] == 200
    assert await edge.stored(layer.digest)
    sender = edge.services.sender
    sender.use_sendfile, sender.idle_timeout = use_sendfile, 0.5
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.config.listen_port)
    writer.write(f"GET {blob_path(img)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    # Never read the body: the server gives up and closes within a few idle timeouts.
    await asyncio.sleep(2.0)
    got = 0
    while chunk := await asyncio.wait_for(reader.read(1 << 20), timeout=5):
        got += len(chunk)
    assert got < layer.size                  # cut short, not completed
    writer.close()
    assert (await edge.get(session, blob_path(img)))[2] == layer.data
