"""The request surface: OCI errors, pull-only, validation, auth towards the upstream, admin."""
import asyncio
import json
import os

import aiohttp
import pytest
import yarl

from tests.support.eventually import eventually
from tests.support.edge import EdgeServer, edge_world, make_config
from tests.support.faulty import FaultyUpstream
from tests.support.images import make_image


@pytest.fixture
async def world(tmp_path):
    async with edge_world(tmp_path, make_image(11, layer_size=8192)) as w:
        yield w


async def req(edge, session, method, path, **kw):
    # encoded=True: send the path exactly as written, no client-side normalising of %2e%2e.
    async with session.request(method, yarl.URL(edge.url + path, encoded=True), **kw) as r:
        return r.status, r.headers, await r.read()


def code(body):
    return json.loads(body)["errors"][0]["code"]


async def test_base_endpoint_answers_like_a_registry(world):
    up, edge, img, session = world
    status, h, body = await req(edge, session, "GET", "/v2/")
    assert status == 200 and h["Docker-Distribution-API-Version"] == "registry/2.0"


@pytest.mark.parametrize("method,path", [
    ("POST", "/v2/demo/app/blobs/uploads/"), ("PUT", "/v2/demo/app/manifests/v1"),
    ("DELETE", "/v2/demo/app/manifests/v1"), ("PATCH", "/v2/demo/app/blobs/uploads/x"),
    ("DELETE", "/v2/demo/app/blobs/sha256:" + "a" * 64)])
async def test_push_methods_are_unsupported(world, method, path):
    up, edge, img, session = world
    status, _, body = await req(edge, session, method, path)
    assert status == 405 and code(body) == "UNSUPPORTED"


@pytest.mark.parametrize("path,status,oci", [
    ("/v2/Demo/App/manifests/v1", 400, "NAME_INVALID"),
    ("/v2/demo/%2e%2e/manifests/v1", 400, "NAME_INVALID"),
    # A malformed tag is a manifest that is not there, as Distribution answers (the
    # conformance suite's nonexistent manifest is ".INVALID_MANIFEST_NAME").
    ("/v2/demo/app/manifests/-bad-tag", 404, "MANIFEST_UNKNOWN"),
    ("/v2/demo/app/manifests/.INVALID_MANIFEST_NAME", 404, "MANIFEST_UNKNOWN"),
    ("/v2/demo/app/blobs/sha256:zz", 400, "DIGEST_INVALID"),
    ("/v2/demo/app/blobs/md5:" + "a" * 32, 400, "DIGEST_INVALID"),
    ("/v2/demo/app/manifests/sha256:" + "a" * 63, 400, "DIGEST_INVALID"),
    ("/v2/" + "a/" * 200 + "b/manifests/v1", 400, "NAME_INVALID"),
    ("/v2/demo/app/nothing-here", 404, "NAME_UNKNOWN"),
    ("/v2/demo/app/manifests/v1?ns=unknown.example", 404, "NAME_UNKNOWN"),
    ("/v2/demo/app/manifests/nope", 404, "MANIFEST_UNKNOWN"),
])
async def test_bad_requests_get_oci_errors_and_touch_nothing(world, path, status, oci):
    up, edge, img, session = world
    up.reset_counts()
    before = sorted(os.listdir(edge.config.data_dir))
    s, _, body = await req(edge, session, "GET", path)
    assert (s, code(body)) == (status, oci)
    if status == 400 or "INVALID_MANIFEST_NAME" in path or "-bad-tag" in path:
        assert sum(up.counts.values()) == 0
    assert sorted(os.listdir(edge.config.data_dir)) == before


async def test_head_errors_have_no_body_but_say_its_length(world):
    up, edge, img, session = world
    status, h, body = await req(edge, session, "HEAD", "/v2/demo/app/manifests/nope")
    assert status == 404 and body == b""
    _, gh, gbody = await req(edge, session, "GET", "/v2/demo/app/manifests/nope")
    assert int(h["Content-Length"]) == len(gbody) > 0
    for headers in (h, gh):
        assert headers["Docker-Distribution-API-Version"] == "registry/2.0"
        assert headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("method,path", [
    ("GET", "/v2/demo/app/manifests/v1"), ("GET", "/_edgecache/nowhere"), ("GET", "/nowhere"),
    ("POST", "/_edgecache/status")])
async def test_every_error_is_an_oci_json_body(world, method, path):
    up, edge, img, session = world
    await up.stop()                       # the upstream gone too: still JSON
    try:
        status, h, body = await req(edge, session, method, path)
    finally:
        await up.start()
    assert status >= 400 and h["Content-Type"].startswith("application/json"), (status, body)
    assert code(body) in {"NAME_UNKNOWN", "UNSUPPORTED", "UNKNOWN", "MANIFEST_UNKNOWN"}


async def test_an_unexpected_exception_is_a_json_500_with_a_request_id(world, caplog):
    up, edge, img, session = world

    async def broken(*_a, **_k):
        raise RuntimeError("a bug")
    edge.services.tags.get = broken        # a bug in a service: what the client sees
    with caplog.at_level("ERROR", logger="edgecache.server"):
        status, h, body = await req(edge, session, "GET", "/v2/demo/app/tags/list")
    err = json.loads(body)["errors"][0]
    assert status == 500 and err["code"] == "UNKNOWN" and "a bug" not in body.decode()
    assert err["request_id"] and any(err["request_id"] in r.getMessage() and r.exc_info
                                     for r in caplog.records)


async def test_an_unreachable_upstream_is_an_oci_code_without_its_address(world):
    up, edge, img, session = world
    await up.stop()
    try:
        status, h, body = await req(edge, session, "GET", "/v2/demo/app/manifests/v9")
    finally:
        await up.start()
    err = json.loads(body)["errors"][0]
    assert status == 503 and err["code"] == "UNKNOWN", body
    assert "127.0.0.1" not in body.decode() and str(up.port) not in body.decode()
    assert err["detail"] == {"upstream": "central.example", "reason": "unreachable"}


async def test_status_and_metrics_report_what_happened(world):
    up, edge, img, session = world
    await req(edge, session, "GET", f"/v2/demo/app/blobs/{img.layers[0].digest}")
    assert await edge.stored(img.layers[0].digest)
    await req(edge, session, "GET", f"/v2/demo/app/blobs/{img.layers[0].digest}")
    st = json.loads((await req(edge, session, "GET", "/_edgecache/status"))[2])
    assert st["blob_count"] == 1 and st["bytes_used"] == img.layers[0].size
    assert st["hit_ratio"] == 0.5 and st["upstreams"]["central.example"]["state"] == "up"
    assert st["budget_bytes"] == 20 * 1024**3 and st["pinned_bytes"] == 0
    m = (await req(edge, session, "GET", "/metrics"))[2].decode()
    for line in ('edgecache_cache_hits_total{kind="blob",upstream="central.example"} 1.0',
                 'edgecache_cache_misses_total{kind="blob",upstream="central.example"} 1.0',
                 f'edgecache_served_bytes_total{{source="local"}} {float(img.layers[0].size)}',
                 'edgecache_upstream_breaker_state{state="closed",upstream="central.example"} 1.0',
                 f'edgecache_store_bytes{{kind="used"}} {float(img.layers[0].size)}'):
        assert line in m, line
    assert (await req(edge, session, "GET", "/_edgecache/health"))[0] == 200


async def test_access_log_has_one_structured_line_per_request(world, caplog):
    up, edge, img, session = world
    import logging
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    await req(edge, session, "GET", f"/v2/demo/app/blobs/{img.layers[0].digest}")
    assert await eventually(lambda: any("/blobs/" in r.getMessage() for r in caplog.records), 2)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.getMessage().startswith("{")]
    line = [x for x in lines if "/blobs/" in x["path"]][-1]
    assert line["method"] == "GET" and line["status"] == 200 and line["source"] == "upstream"
    assert line["bytes"] == img.layers[0].size and line["duration_ms"] > 0
    import datetime
    when = datetime.datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) < 10


@pytest.mark.parametrize("basic", [None, ("robot$edge", "s3cret")])
async def test_bearer_token_auth_one_token_for_many_requests(tmp_path, basic):
    img = make_image(12, layers=3, layer_size=4096)
    async with FaultyUpstream({"private/app:v1": img}, auth=True, basic=basic) as up:
        ups = {"central.example": {"url": up.url}}
        if basic:
            # public: anonymous clients may use it although it has credentials
            ups["central.example"].update(username=basic[0], password=basic[1], public=True)
        doc = make_config(tmp_path / "d", {}, default="central.example")
        doc["upstreams"] = ups
        async with EdgeServer(doc) as edge, aiohttp.ClientSession() as session:
            rs = await asyncio.gather(*(req(edge, session, "GET", f"/v2/private/app/blobs/{b.digest}")
                                        for b in img.layers),
                                      req(edge, session, "GET", "/v2/private/app/manifests/v1"))
            assert [r[0] for r in rs] == [200] * 4
            assert up.token_requests == 1
            # The upstream forgets its tokens (expiry, rotation): one new token, no failure.
            up.revoke_tokens()
            status, _, _ = await req(edge, session, "GET", f"/v2/private/app/blobs/{img.config.digest}")
            assert status == 200 and up.token_requests == 2


async def test_wrong_credentials_are_denied_not_hung(tmp_path):
    img = make_image(13, layer_size=1024)
    async with FaultyUpstream({"private/app:v1": img}, basic=("u", "right")) as up:
        doc = make_config(tmp_path / "d", {}, default="central.example")
        doc["upstreams"] = {"central.example": {"url": up.url, "username": "u", "password": "wrong",
                                                "public": True}}
        async with EdgeServer(doc) as edge, aiohttp.ClientSession() as session:
            status, _, body = await req(edge, session, "GET", "/v2/private/app/manifests/v1")
            assert status == 403 and code(body) == "DENIED"
