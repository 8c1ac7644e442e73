"""The referrers API through the cache: from an upstream that has it (a registry of
the tests' own: pages, filter, ETag) and from the real Distribution 2.8, which has
not (the referrers tag schema); cached like tags, and served with the upstream gone.
Artifacts (SBOMs, signatures, any artifactType and config type) pull through by
digest and tag with oras and skopeo."""
import asyncio
import json
import subprocess

import aiohttp
import oras.client
import pytest

from tests.conftest import require_binaries
from tests.support.edge import EdgeProcess, EdgeServer, make_config
from tests.support.images import Blob, make_image, push
from tests.support.supplychain import (IN_TOTO, SPDX, ReferrersUpstream, attach, descriptor_of,
                                       payload, referrer, signature_manifest, Key)

HOST = "central.example"
INDEX = "application/vnd.oci.image.index.v1+json"


def _world(up, tmp_path, **extra):
    return make_config(tmp_path / "data", {HOST: up.url}, default=HOST, tag_ttl="2s", **extra)


def _attached(img):
    subject = {"mediaType": img.media_type, "digest": img.digest, "size": len(img.manifest)}
    sbom = referrer(Blob(img.media_type, img.manifest), SPDX, b'{"spdxVersion":"SPDX-2.3"}',
                    annotations={"org.opencontainers.image.created": "2026-12-01T00:00:00Z"})
    att = referrer(Blob(img.media_type, img.manifest), IN_TOTO, b'{"_type":"statement"}')
    p = payload(f"{HOST}/app", img.digest)
    sig = signature_manifest([(p, Key().sign(p))], subject=subject)
    return sbom, att, sig


async def _get(session, url, **kw):
    async with session.get(url, **kw) as r:
        return r.status, r.headers, await r.read()


async def test_referrers_api_pages_filter_cache_and_offline(tmp_path):
    img = make_image(301, layers=1, layer_size=4096)
    async with ReferrersUpstream(page=2) as up:
        up.put("app", "v1", img.manifest_blob(), img.blobs)
        arts = _attached(img)
        for a in arts:
            up.put("app", None, a)
        async with EdgeServer(_world(up, tmp_path)) as edge, aiohttp.ClientSession() as s:
            url = f"{edge.url}/v2/app/referrers/{img.digest}"
            status, headers, body = await _get(s, url)
            assert status == 200, body
            assert headers["Content-Type"] == INDEX
            doc = json.loads(body)
            want = sorted((descriptor_of(a) for a in arts), key=lambda d: d["digest"])
            assert doc["manifests"] == want            # both upstream pages, as it sent them
            assert up.count("referrers") == 2
            # The filter, applied here (the kept answer is whole).
            status, headers, body = await _get(s, url, params={"artifactType": SPDX})
            assert headers["OCI-Filters-Applied"] == "artifactType"
            assert [d["digest"] for d in json.loads(body)["manifests"]] == [arts[0].digest]
            assert json.loads(body)["manifests"][0]["annotations"] == {
                "org.opencontainers.image.created": "2026-12-01T00:00:00Z"}
            # Pages of our own: n=1, then Link to the rest.
            seen, next_url = [], url + "?n=1"
            while next_url:
                status, headers, body = await _get(s, next_url)
                page = json.loads(body)["manifests"]
                assert len(page) == 1
                seen += page
                link = headers.get("Link")
                next_url = edge.url + link[1:link.index(">")] if link else None
            assert seen == want
            assert up.count("referrers") == 2           # all within tag_ttl: no upstream traffic
            # One page: after tag_ttl a conditional GET (the upstream's ETag) keeps it.
            lone = make_image(305, layers=1, layer_size=1024)
            up.put("app", "lone", lone.manifest_blob(), lone.blobs)
            up.put("app", None, _attached(lone)[0])
            lone_url = f"{edge.url}/v2/app/referrers/{lone.digest}"
            first = (await _get(s, lone_url))[2]
            await asyncio.sleep(2.2)
            status, headers, body = await _get(s, lone_url)
            assert status == 200 and body == first and up.not_modified == 1
            # Several pages (no ETag covers them all): asked again whole.
            status, headers, body = await _get(s, url)
            assert status == 200 and json.loads(body)["manifests"] == want
            assert up.count("referrers") == 2 + 2 + 2
            # Each referrer pulls through by digest (any artifactType, empty config).
            for a in arts:
                status, headers, body = await _get(s, f"{edge.url}/v2/app/manifests/{a.digest}")
                assert status == 200 and body == a.manifest.data
            # A repository the upstream lacks (a 404) turns the API off for it alone.
            status, _, body = await _get(s, f"{edge.url}/v2/nope/referrers/{img.digest}")
            asked = up.count("referrers")
            status, _, body = await _get(s, lone_url + "?n=5")
            assert up.count("referrers") == asked           # within tag_ttl: cached
            await asyncio.sleep(2.2)
            status, _, body = await _get(s, lone_url)
            assert status == 200 and up.count("referrers") == asked + 1 and up.not_modified == 2
            # Bad digests are 400 DIGEST_INVALID, as the spec says.
            status, _, body = await _get(s, f"{edge.url}/v2/app/referrers/sha256:nothex")
            assert status == 400 and json.loads(body)["errors"][0]["code"] == "DIGEST_INVALID"
        # The upstream gone: the last answer, marked stale; the referrers themselves too.
        await up.stop()
        async with EdgeServer(_world(up, tmp_path)) as edge, aiohttp.ClientSession() as s:
            await asyncio.sleep(2.2)
            status, headers, body = await _get(s, f"{edge.url}/v2/app/referrers/{img.digest}")
            assert status == 200, body
            assert headers.get("X-Edgecache-Stale") == "true"
            assert json.loads(body)["manifests"] == want
            for a in arts:
                status, _, body = await _get(s, f"{edge.url}/v2/app/manifests/{a.digest}")
                assert status == 200 and body == a.manifest.data


async def test_a_lying_upstream_answer_is_cleaned_and_bounded(tmp_path):
    """Descriptors that are not descriptors are dropped, never passed on; a next link
    to another host is followed only as a query on the same upstream."""
    from aiohttp import web
    from tests.support.httpserver import HttpServer
    img = make_image(302, layers=1, layer_size=1024)
    calls = []

    async def referrers(request):
        calls.append(dict(request.query))
        good = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + "a" * 64, "size": 10, "artifactType": SPDX,
                "extra": "x" * 100}
        bad = [{"digest": "sha256:zz", "size": 1, "mediaType": "x/y"}, "string",
               {"mediaType": "x/y", "digest": "sha256:" + "b" * 64, "size": -1}, good]
        if request.query.get("p") == "2":
            return web.json_response({"manifests": [good]})
        return web.json_response({"schemaVersion": 2, "manifests": bad},
                                 headers={"Link": '<https://evil.example/v2/app/referrers/x?p=2>; rel="next"'})

    async with HttpServer([web.get("/v2/app/referrers/{d}", referrers)]) as up:
        async with EdgeServer(_world(up, tmp_path)) as edge, aiohttp.ClientSession() as s:
            status, _, body = await _get(s, f"{edge.url}/v2/app/referrers/{img.digest}")
            assert status == 200
            assert json.loads(body)["manifests"] == [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + "a" * 64, "size": 10, "artifactType": SPDX}]
            assert calls == [{}, {"p": "2"}]
            assert all(p == f"/v2/app/referrers/{img.digest}" for _, p, _ in up.seen)


@pytest.mark.integration
def test_referrers_tag_schema_on_distribution_with_oras_and_skopeo_offline(tmp_path, registry):
    require_binaries("skopeo")
    img = make_image(303, layers=1, layer_size=64 * 1024)
    push(registry.url, "app", "v1", img)
    sbom = referrer(Blob(img.media_type, img.manifest), SPDX, b'{"spdxVersion":"SPDX-2.3"}')
    doc = json.loads(sbom.manifest.data)
    doc["layers"][0]["annotations"] = {"org.opencontainers.image.title": "sbom.spdx.json"}
    from tests.support.supplychain import Artifact
    sbom = Artifact(Blob(sbom.manifest.media_type, json.dumps(doc).encode()), sbom.blobs)
    attach(registry.url, "app", sbom)
    # A Helm chart: an artifact by tag, with a config type of its own.
    chart_config = Blob("application/vnd.cncf.helm.config.v1+json", b'{"name":"web","version":"1.0.0"}')
    chart = Blob("application/vnd.cncf.helm.chart.content.v1.tar+gzip", b"\x1f\x8b" + b"c" * 500)
    chart_manifest = Blob("application/vnd.oci.image.manifest.v1+json", json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": chart_config.descriptor(),
        "layers": [{**chart.descriptor(), "annotations": {"org.opencontainers.image.title": "web-1.0.0.tgz"}}],
    }).encode())
    from tests.support.supplychain import push_artifact
    push_artifact(registry.url, "charts/web", "1.0.0", Artifact(chart_manifest, (chart_config, chart)))

    edge = EdgeProcess(tmp_path, make_config(tmp_path / "data", {HOST: registry.url}, default=HOST))
    with edge:
        import urllib.request
        url = f"{edge.url}/v2/app/referrers/{img.digest}"
        with urllib.request.urlopen(url) as r:
            got = json.loads(r.read())
        assert [d["digest"] for d in got["manifests"]] == [sbom.digest]
        assert got["manifests"][0]["artifactType"] == SPDX
        # Distribution has no API: asked once, then the tag schema only.
        assert registry.count("GET", r"/v2/app/referrers/.*") == 1
        other = make_image(304, layers=1, layer_size=1024)
        push(registry.url, "app", "v2", other)
        with urllib.request.urlopen(f"{edge.url}/v2/app/referrers/{other.digest}") as r:
            assert json.loads(r.read())["manifests"] == []
        assert registry.count("GET", r"/v2/app/referrers/.*") == 1
        host = edge.url.removeprefix("http://")
        client = oras.client.OrasClient(hostname=host, insecure=True)
        files = client.pull(target=f"{host}/app@{sbom.digest}", outdir=str(tmp_path / "oras1"))
        assert [open(f, "rb").read() for f in files] == [sbom.blobs[1].data]
        files = client.pull(target=f"{host}/charts/web:1.0.0", outdir=str(tmp_path / "oras2"))
        assert [open(f, "rb").read() for f in files] == [chart.data]
        r = subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{host}/app:v1",
                            f"oci:{tmp_path / 'layout'}:v1"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    registry.stop()
    with edge:
        with urllib.request.urlopen(url) as r:
            assert [d["digest"] for d in json.loads(r.read())["manifests"]] == [sbom.digest]
            assert r.headers["X-Edgecache-Stale"] == "true" or r.headers["X-Edgecache-Source"] == "local"
        client = oras.client.OrasClient(hostname=host, insecure=True)
        files = client.pull(target=f"{host}/app@{sbom.digest}", outdir=str(tmp_path / "oras3"))
        assert [open(f, "rb").read() for f in files] == [sbom.blobs[1].data]
        files = client.pull(target=f"{host}/charts/web:1.0.0", outdir=str(tmp_path / "oras4"))
        assert [open(f, "rb").read() for f in files] == [chart.data]
