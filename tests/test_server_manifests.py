"""Manifests, tags, offline behaviour and the breaker, against the fault-injecting upstream."""
import asyncio
import json
import time

import aiohttp
import pytest

from tests.support.edge import EdgeServer, make_config
from tests.support.faulty import FaultyUpstream
from tests.support.images import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, make_image, make_index

ALL = ", ".join([OCI_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json",
                 OCI_MANIFEST, DOCKER_MANIFEST])


class Clock:
    def __init__(self):
        self.t = time.time()

    def __call__(self):
        return self.t


@pytest.fixture
async def world(tmp_path):
    idx = make_index(3, layer_size=4096)
    up = await FaultyUpstream({"demo/app:v1": idx}).start()
    edge = await EdgeServer(make_config(tmp_path / "data", {"central.example": up.url},
                                        default="central.example", tag_ttl="60s",
                                        breaker={"failures": 2, "backoff": "30s"})).start()
    clock = Clock()
    edge.services.manifests.clock = clock
    async with aiohttp.ClientSession() as session:
        yield up, edge, idx, session, clock
    await edge.stop()
    await up.stop()


async def get(edge, session, path, accept=ALL, method="GET"):
    async with session.request(method, edge.url + path, headers={"Accept": accept}) as r:
        return r.status, r.headers, await r.read()


def tag_hits(up):
    return up.count("GET", r"/v2/demo/app/manifests/.*"), up.count("HEAD", r"/v2/demo/app/manifests/.*")


async def test_manifest_served_byte_for_byte_with_exact_headers(world):
    up, edge, idx, session, clock = world
    for path in ("/v2/demo/app/manifests/v1", f"/v2/demo/app/manifests/{idx.digest}",
                 "/v2/demo/app/manifests/v1?ns=central.example",
                 "/v2/central.example/demo/app/manifests/v1"):
        status, h, body = await get(edge, session, path)
        assert status == 200 and body == idx.index
        assert h["Docker-Content-Digest"] == idx.digest
        assert h["Content-Type"] == OCI_INDEX
        assert h["Content-Length"] == str(len(idx.index))
    status, h, body = await get(edge, session, "/v2/demo/app/manifests/v1", method="HEAD")
    assert status == 200 and body == b"" and h["Content-Length"] == str(len(idx.index))


async def test_within_the_ttl_a_tag_costs_no_upstream_traffic(world):
    up, edge, idx, session, clock = world
    await get(edge, session, "/v2/demo/app/manifests/v1")
    first = tag_hits(up)
    for _ in range(20):
        assert (await get(edge, session, "/v2/demo/app/manifests/v1"))[0] == 200
    assert tag_hits(up) == first


async def test_after_the_ttl_an_unchanged_tag_costs_one_head_and_no_get(world):
    up, edge, idx, session, clock = world
    await get(edge, session, "/v2/demo/app/manifests/v1")
    gets, heads = tag_hits(up)
    clock.t += 61
    await asyncio.gather(*(get(edge, session, "/v2/demo/app/manifests/v1") for _ in range(10)))
    assert tag_hits(up) == (gets, heads + 1)


async def test_a_moved_tag_is_followed_after_the_ttl(world):
    up, edge, idx, session, clock = world
    await get(edge, session, "/v2/demo/app/manifests/v1")
    new = make_index(4, layer_size=4096)
    up.add("demo/app:v1", new)
    assert (await get(edge, session, "/v2/demo/app/manifests/v1"))[2] == idx.index   # still fresh
    clock.t += 61
    status, h, body = await get(edge, session, "/v2/demo/app/manifests/v1")
    assert body == new.index and h["Docker-Content-Digest"] == new.digest


@pytest.mark.parametrize("fault", [{"status": 500}, {"status": 429, "retry_after": 3}, "down"])
async def test_stale_if_error_serves_the_last_known_digest(world, fault):
    up, edge, idx, session, clock = world
    await get(edge, session, "/v2/demo/app/manifests/v1")
    clock.t += 61
    if fault == "down":
        await up.stop()
    else:
        up.fault("status", **fault)
    status, h, body = await get(edge, session, "/v2/demo/app/manifests/v1")
    assert status == 200 and body == idx.index
    assert h["X-Edgecache-Stale"] == "true" and "110" in h["Warning"]
    metrics = (await get(edge, session, "/metrics"))[2].decode()
    assert 'edgecache_stale_serves_total{upstream="central.example"} 1.0' in metrics


async def test_a_tag_deleted_upstream_is_not_served_stale(world):
    up, edge, idx, session, clock = world
    await get(edge, session, "/v2/demo/app/manifests/v1")
    clock.t += 61
    up.fault("status", status=404)
    status, _, body = await get(edge, session, "/v2/demo/app/manifests/v1")
    assert status == 404 and b"MANIFEST_UNKNOWN" in body


async def test_a_cached_manifest_of_a_type_the_client_did_not_accept_is_never_served(world):
    up, edge, idx, session, clock = world
    await get(edge, session, "/v2/demo/app/manifests/v1")            # caches the index
    status, h, body = await get(edge, session, f"/v2/demo/app/manifests/{idx.digest}",
                                accept=OCI_MANIFEST)
    assert status == 404 and b"MANIFEST_UNKNOWN" in body
    # By tag, a client that takes only image manifests is asked for upstream with its own
    # Accept list; this upstream has only an index for the tag, so (as Distribution does)
    # the answer is MANIFEST_UNKNOWN, not the index, now and from the cache later.
    for _ in range(2):
        status, h, body = await get(edge, session, "/v2/demo/app/manifests/v1", accept=OCI_MANIFEST)
        assert status == 404 and b"MANIFEST_UNKNOWN" in body
    assert up.count("HEAD", "/v2/demo/app/manifests/v1") == 3
    assert up.log[-1][0] == "HEAD"


async def test_offline_cached_digests_and_tags_are_served_and_the_rest_fails_fast(world):
    up, edge, idx, session, clock = world
    child = idx.images[0]
    await get(edge, session, "/v2/demo/app/manifests/v1")
    await get(edge, session, f"/v2/demo/app/manifests/{child.digest}")
    await get(edge, session, f"/v2/demo/app/blobs/{child.layers[0].digest}")
    await up.stop()
    clock.t += 3600
    assert (await get(edge, session, "/v2/demo/app/manifests/v1"))[2] == idx.index
    assert (await get(edge, session, f"/v2/demo/app/manifests/{child.digest}"))[0] == 200
    assert (await get(edge, session, f"/v2/demo/app/blobs/{child.layers[0].digest}"))[2] == child.layers[0].data
    # Not cached: 5xx. After `failures` (2) refused connections the breaker opens ...
    for _ in range(2):
        status, _, _ = await get(edge, session, f"/v2/demo/app/blobs/{child.layers[1].digest}")
        assert status == 503
    st = json.loads((await get(edge, session, "/_edgecache/status"))[2])
    assert st["upstreams"]["central.example"]["state"] == "down"
    # ... and what is not cached is answered at once, without dialling.
    t0 = time.monotonic()
    status, h, body = await get(edge, session, f"/v2/demo/app/blobs/{child.layers[1].digest}")
    assert status == 503 and b"breaker_open" in body and h["Retry-After"] and time.monotonic() - t0 < 1.0
    assert (await get(edge, session, "/v2/demo/app/manifests/v1"))[0] == 200


async def test_unknown_ns_is_name_unknown_and_never_dialled(world):
    up, edge, idx, session, clock = world
    up.reset_counts()
    status, _, body = await get(edge, session, "/v2/demo/app/manifests/v1?ns=evil.example")
    assert status == 404 and json.loads(body)["errors"][0]["code"] == "NAME_UNKNOWN"
    assert sum(up.counts.values()) == 0


async def test_oversized_manifest_is_refused(world):
    up, edge, idx, session, clock = world
    from tests.support.images import ImageIndex
    big = ImageIndex(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [],
                                 "annotations": {"x": "y" * (4 * 1024 * 1024)}}).encode(), OCI_INDEX, ())
    up.add("demo/app:big", big)
    status, _, body = await get(edge, session, "/v2/demo/app/manifests/big")
    assert status == 502 and b"MANIFEST_INVALID" in body


async def test_tags_list_passes_through_and_is_served_offline(world):
    up, edge, idx, session, clock = world
    up.add("demo/app:v2", make_image(9, layer_size=1024))
    status, _, body = await get(edge, session, "/v2/demo/app/tags/list")
    assert status == 200 and json.loads(body)["tags"] == ["v1", "v2"]
    await up.stop()
    status, _, cached = await get(edge, session, "/v2/demo/app/tags/list")
    assert status == 200 and cached == body
