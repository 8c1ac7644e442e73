"""Pinned images bring their supply chain, against the real Distribution (no
referrers API: the tag schema and cosign's tags): signatures, SBOMs and
attestations fetched, pinned, re-checked at every sync, served with the upstream
gone; a tag never switches to an image an enforcing rule refuses; a pinned tag
seen to move syncs at once."""
import asyncio
import json
from urllib.parse import quote

import aiohttp
import pytest

from edgecache.reference import parse_digest
from edgecache.server.app import BACKGROUND_SYNC
from tests.support.edge import EdgeServer, make_config
from tests.support.eventually import eventually
from tests.support.images import Blob, make_image, make_index, push
from tests.support.supplychain import IN_TOTO, SPDX, Key, attach, referrer, schema_tag, sign_into

pytestmark = pytest.mark.integration
HOST = "central.example"
ACCEPT = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"


def _edge(tmp_path, registry, pinned, *, background=False, **extra):
    doc = make_config(tmp_path / "data", {HOST: registry.url}, default=HOST, pinned=str(pinned),
                      **extra)
    edge = EdgeServer(doc)
    edge.app[BACKGROUND_SYNC] = background
    return edge


async def _get(s, url, accept=ACCEPT):
    async with s.get(url, headers={"Accept": accept}) as r:
        return r.status, r.headers, await r.read()


def _entry(edge):
    (e,) = edge.services.syncer.status()["entries"]
    return e


async def test_supply_chain_pinned_rechecked_and_served_offline(tmp_path, registry):
    url = registry.url
    idx = make_index(501, arches=("amd64", "arm64"), layers=1, layer_size=4096)
    push(url, "pos/app", "v1", idx)
    amd64 = next(i for i in idx.images if i.platform["architecture"] == "amd64")
    k1 = Key()
    sign_into(url, "pos/app", f"{HOST}/pos/app", idx.digest, k1)
    sbom = referrer(Blob(idx.media_type, idx.manifest), SPDX, b'{"spdxVersion":"SPDX-2.3"}')
    attach(url, "pos/app", sbom)
    att = referrer(Blob(amd64.media_type, amd64.manifest), IN_TOTO, b'{"_type":"in-toto"}')
    attach(url, "pos/app", att)
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(f"images:\n  - ref: {HOST}/pos/app:v1\n    platforms: [linux/amd64]\n"
                      "    referrers: all\n")
    keyfile = k1.write(tmp_path / "k1.pub")
    policy = [{"name": "signed", "match": f"{HOST}/pos/*", "require": "signature",
               "keys": [str(keyfile)]}]
    edge = _edge(tmp_path, registry, pinned, policy=policy)
    await edge.start()
    try:
        await edge.services.syncer.sync()
        e = _entry(edge)
        assert e["state"] == "complete", e
        assert e["referrers"] == 3                       # the .sig tag, the SBOM, the attestation
        store = edge.services.store
        for d in (sbom.digest, att.digest, *(b.digest for b in sbom.blobs + att.blobs)):
            assert store.is_pinned(d), d
        # A signature added after the image (a second key signs it) and another SBOM:
        # the next sync brings them.
        k2 = Key("ed25519")
        sign_into(url, "pos/app", f"{HOST}/pos/app", idx.digest, k2)
        sbom2 = referrer(Blob(idx.media_type, idx.manifest), SPDX, b'{"spdxVersion":"SPDX-2.3","n":2}')
        attach(url, "pos/app", sbom2)
        await edge.services.syncer.sync()
        assert _entry(edge)["referrers"] == 4
        assert store.is_pinned(sbom2.digest)
    finally:
        await edge.stop()
    registry.stop()
    # The WAN down, the cache restarted: the image, its signatures, SBOMs and the
    # referrers answers all still there, and the policy verifies from them.
    edge = _edge(tmp_path, registry, pinned, policy=policy)
    await edge.start()
    try:
        async with aiohttp.ClientSession() as s:
            status, _, body = await _get(s, f"{edge.url}/v2/pos/app/manifests/v1")
            assert status == 200, body
            status, _, body = await _get(s, f"{edge.url}/v2/pos/app/manifests/{amd64.digest}")
            assert status == 200, body
            status, headers, body = await _get(s, f"{edge.url}/v2/pos/app/referrers/{idx.digest}")
            assert status == 200, body
            assert {d["digest"] for d in json.loads(body)["manifests"]} == {sbom.digest, sbom2.digest}
            status, _, body = await _get(s, f"{edge.url}/v2/pos/app/referrers/{amd64.digest}"
                                            f"?artifactType={quote(IN_TOTO)}")
            assert [d["digest"] for d in json.loads(body)["manifests"]] == [att.digest]
            status, _, body = await _get(s, f"{edge.url}/v2/pos/app/manifests/"
                                            f"{schema_tag(idx.digest, 'sig')}")
            assert status == 200 and len(json.loads(body)["layers"]) == 2
            for a in (sbom, sbom2, att):
                status, _, _ = await _get(s, f"{edge.url}/v2/pos/app/manifests/{a.digest}")
                assert status == 200
                for b in a.blobs:
                    async with s.get(f"{edge.url}/v2/pos/app/blobs/{b.digest}") as r:
                        assert r.status == 200 and await r.read() == b.data
    finally:
        await edge.stop()


async def test_a_tag_never_switches_to_an_image_the_policy_refuses(tmp_path, registry):
    url = registry.url
    good = make_image(511, layers=1, layer_size=2048)
    push(url, "pos/app", "v1", good)
    k = Key()
    sign_into(url, "pos/app", f"{HOST}/pos/app", good.digest, k)
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(f"images:\n  - {HOST}/pos/app:v1\n")
    policy = [{"name": "signed", "match": f"{HOST}/pos/*", "require": "signature",
               "keys": [str(k.write(tmp_path / "k.pub"))]}]
    edge = _edge(tmp_path, registry, pinned, policy=policy)
    await edge.start()
    try:
        syncer = edge.services.syncer
        await syncer.sync()
        assert _entry(edge)["state"] == "complete"
        unsigned = make_image(512, layers=1, layer_size=2048)
        push(url, "pos/app", "v1", unsigned)
        await syncer.sync()
        e = _entry(edge)
        assert e["state"] == "failed" and "policy rule 'signed'" in e["reason"], e
        assert syncer.pinned_tag((HOST, "pos/app", "v1")) == good.digest
        assert not edge.services.store.is_pinned(unsigned.layers[0].digest)
        async with aiohttp.ClientSession() as s:
            status, headers, _ = await _get(s, f"{edge.url}/v2/pos/app/manifests/v1")
            assert status == 200 and headers["Docker-Content-Digest"] == good.digest
    finally:
        await edge.stop()


async def test_a_pinned_tag_seen_to_move_syncs_at_once(tmp_path, registry):
    url = registry.url
    old = make_image(521, layers=1, layer_size=2048)
    push(url, "pos/app", "v1", old)
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(f"referrers: none\nimages:\n  - {HOST}/pos/app:v1\n")
    # The schedule's next run is hours away: only the tag check can start a sync.
    edge = _edge(tmp_path, registry, pinned, background=True, tag_ttl="1s",
                 sync={"interval": "6h"})
    await edge.start()
    try:
        syncer = edge.services.syncer
        key = (HOST, "pos/app", "v1")
        assert await eventually(lambda: syncer.pinned_tag(key) == old.digest, 10)
        new = make_image(522, layers=1, layer_size=2048)
        push(url, "pos/app", "v1", new)
        async with aiohttp.ClientSession() as s:
            status, headers, _ = await _get(s, f"{edge.url}/v2/pos/app/manifests/v1")
            assert headers["Docker-Content-Digest"] == old.digest       # within tag_ttl
            await asyncio.sleep(1.2)
            runs = syncer.runs
            status, headers, _ = await _get(s, f"{edge.url}/v2/pos/app/manifests/v1")
            assert headers["Docker-Content-Digest"] == old.digest       # until the new is complete
            assert await eventually(lambda: syncer.pinned_tag(key) == new.digest, 10)
            assert syncer.runs == runs + 1
            assert edge.services.store.is_pinned(new.layers[0].digest)
            assert edge.services.store.has(parse_digest(new.layers[0].digest))
            status, headers, _ = await _get(s, f"{edge.url}/v2/pos/app/manifests/v1")
            assert headers["Docker-Content-Digest"] == new.digest
    finally:
        await edge.stop()


async def test_a_supply_chain_over_its_limit_is_refused_before_it_moves(tmp_path, registry):
    url = registry.url
    img = make_image(531, layers=1, layer_size=2048)
    push(url, "pos/app", "v1", img)
    big = referrer(Blob(img.media_type, img.manifest), IN_TOTO, b"x" * 300_000)   # "an attestation"
    attach(url, "pos/app", big)
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(f"images:\n  - {HOST}/pos/app:v1\n")
    edge = _edge(tmp_path, registry, pinned, limits={"supply_chain_bytes": "256KiB"})
    await edge.start()
    try:
        await edge.services.syncer.sync()
        e = _entry(edge)
        assert e["state"] == "failed" and "limits.supply_chain_bytes" in e["reason"], e
        assert not edge.services.store.has(parse_digest(big.blobs[1].digest))
        assert edge.services.syncer.pinned_tag((HOST, "pos/app", "v1")) is None
    finally:
        await edge.stop()


def test_edgecache_sync_shows_the_referrers_it_brought(tmp_path, registry):
    import subprocess
    import sys
    import yaml
    img = make_image(541, layers=1, layer_size=2048)
    push(registry.url, "pos/app", "v1", img)
    sign_into(registry.url, "pos/app", f"{HOST}/pos/app", img.digest, Key())
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(f"images:\n  - {HOST}/pos/app:v1\n")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(make_config(tmp_path / "data", {HOST: registry.url},
                                                 default=HOST, pinned=str(pinned))))
    r = subprocess.run([sys.executable, "-m", "edgecache", "sync", "--config", str(config)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"{HOST}/pos/app:v1" in r.stdout and "+1 referrers" in r.stdout, r.stdout
    assert "pinned: 1/1 complete" in r.stdout
