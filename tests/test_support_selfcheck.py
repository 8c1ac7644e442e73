"""Proves tests/support works against the real things: Distribution, skopeo, containerd, the faulty upstream."""
from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support import containerd as ctrd
from tests.support.faulty import FaultyUpstream
from tests.support.images import MANIFEST_TYPES, make_image, make_index, push, sha256_digest, write_oci_layout
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

needs_registry = pytest.mark.skipif(shutil.which("docker-registry") is None, reason="docker-registry not installed")


def get(url: str, accept: tuple[str, ...] = MANIFEST_TYPES, method: str = "GET",
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, headers={"Accept": ", ".join(accept), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with Registry() as r:
        yield r


@needs_registry
def test_push_image_and_index_then_fetch_by_tag(registry: Registry) -> None:
    img = make_image(1)
    idx = make_index(2, media="docker", layers=1, layer_size=4096)
    assert push(registry.url, "demo/app", "v1", img) == img.digest
    assert push(registry.url, "demo/multi", "v1", idx) == idx.digest
    assert make_image(1).digest == img.digest  # deterministic per seed

    for repo, obj in (("demo/app", img), ("demo/multi", idx)):
        status, headers, body = get(f"{registry.url}/v2/{repo}/manifests/v1")
        assert status == 200
        assert headers["Docker-Content-Digest"] == obj.digest == sha256_digest(body)
        assert headers["Content-Type"] == obj.media_type
    listed = json.loads(get(f"{registry.url}/v2/demo/multi/manifests/v1")[2])
    assert [m["platform"]["architecture"] for m in listed["manifests"]] == ["amd64", "arm64"]


@needs_registry
def test_access_log_counts_exactly(registry: Registry) -> None:
    img = make_image(3)
    push(registry.url, "demo/count", "v1", img)
    layer = img.layers[0]
    path = rf"/v2/demo/count/blobs/{layer.digest}"
    heads_before = registry.count("HEAD", path)  # push() HEADs each blob first

    status, _, body = get(registry.url + path)
    assert status == 200 and sha256_digest(body) == layer.digest
    assert get(registry.url + path, method="HEAD")[0] == 200

    assert registry.count("GET", path) == 1
    assert registry.count("HEAD", path) == heads_before + 1
    assert registry.count("GET", r"/v2/.*/blobs/sha256:[0-9a-f]{64}") == 1
    assert ("GET", path, 200) in registry.requests()


@needs_registry
@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
def test_oci_layout_copies_with_skopeo(registry: Registry, tmp_path: Path) -> None:
    idx = make_index(4, layers=1, layer_size=4096)
    write_oci_layout(tmp_path, "v1", idx)
    subprocess.run(["skopeo", "copy", "--all", "--dest-tls-verify=false",
                    f"oci:{tmp_path}:v1", f"docker://{registry.host}/demo/skopeo:v1"],
                   check=True, capture_output=True, timeout=60)
    assert get(f"{registry.url}/v2/demo/skopeo/manifests/v1")[1]["Docker-Content-Digest"] == idx.digest


async def test_faulty_upstream_faults_and_counts() -> None:
    img = make_image(5, layers=1)
    layer = img.layers[0]
    async with FaultyUpstream({"demo/app:v1": img}) as up, aiohttp.ClientSession() as s:
        blob_url = f"{up.url}/v2/demo/app/blobs/{layer.digest}"

        up.fault("truncate", layer.digest, times=1)
        with pytest.raises(aiohttp.ClientPayloadError):
            async with s.get(blob_url) as r:
                assert r.content_length == layer.size
                await r.read()
        async with s.get(blob_url) as r:  # times=1: the fault is gone
            assert sha256_digest(await r.read()) == layer.digest

        up.fault("wrong_bytes", times=1)
        async with s.get(blob_url) as r:
            body = await r.read()
            assert len(body) == layer.size and sha256_digest(body) != layer.digest

        up.fault("status", status=429, retry_after=3, times=1)
        async with s.head(f"{up.url}/v2/demo/app/manifests/v1") as r:
            assert (r.status, r.headers["Retry-After"]) == (429, "3")
        async with s.head(f"{up.url}/v2/demo/app/manifests/v1") as r:
            assert r.status == 200 and r.headers["Docker-Content-Digest"] == img.digest

        assert up.count("GET", rf"/v2/demo/app/blobs/{layer.digest}") == 3
        assert up.count("HEAD", r"/v2/demo/app/manifests/v1") == 2

        await up.stop()  # "refused": nothing listens on the port until start()
        with pytest.raises(aiohttp.ClientConnectorError):
            async with s.get(blob_url):
                pass
        await up.start()
        async with s.get(blob_url) as r:
            assert r.status == 200


def test_faulty_upstream_in_thread_with_token_auth() -> None:
    img = make_image(6, layers=1, layer_size=1024)
    with FaultyUpstream.in_thread({"demo/app:v1": img}, basic=("alice", "s3cret")) as up:
        manifest_url = f"{up.url}/v2/demo/app/manifests/v1"
        status, headers, _ = get(manifest_url)
        assert status == 401
        assert headers["WWW-Authenticate"] == (
            f'Bearer realm="{up.url}/token",service="faulty",scope="repository:demo/app:pull"')

        token_url = f"{up.url}/token?service=faulty&scope=repository:demo/app:pull"
        assert get(token_url)[0] == 401  # Basic credentials required
        status, _, body = get(token_url, headers={"Authorization": "Basic YWxpY2U6czNjcmV0"})
        assert status == 200 and json.loads(body)["expires_in"] == 300
        token = json.loads(body)["token"]

        status, headers, _ = get(manifest_url, headers={"Authorization": f"Bearer {token}"})
        assert status == 200 and headers["Docker-Content-Digest"] == img.digest
        assert up.token_requests == 2


@needs_registry
@pytest.mark.skipif(not ctrd.available(), reason="containerd needs root and containerd/ctr binaries")
def test_containerd_pulls_through_hosts_toml(registry: Registry, tmp_path: Path) -> None:
    idx = make_index(7, layers=1, layer_size=16 * 1024)
    push(registry.url, "demo/ctr", "v1", idx)
    ctrd.write_hosts_toml(tmp_path / "certs.d", "central.example", registry.url)
    with ctrd.Containerd() as c:
        res = c.pull("central.example/demo/ctr:v1", tmp_path / "certs.d")
        assert res.returncode == 0, res.stderr + c.log_tail()
        assert c.image_digest("central.example/demo/ctr:v1") == idx.digest
    # Resolved through the mirror (HEAD by tag, K3s-style ?ns=), then only amd64 content fetched.
    assert ("HEAD", "/v2/demo/ctr/manifests/v1?ns=central.example", 200) in registry.requests()
    amd64, arm64 = idx.images
    assert registry.count("GET", rf"/v2/demo/ctr/blobs/{amd64.layers[0].digest}") == 1
    assert registry.count("GET", rf"/v2/demo/ctr/blobs/{arm64.layers[0].digest}") == 0
