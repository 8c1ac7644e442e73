"""The edge signature policy: cosign signatures checked at the branch, from what
the cache holds when the WAN is down. A real cosign fixture (containers/image's),
signatures made here in cosign's format with the three kinds of key, tampered
payloads, signatures for other digests, wrong keys, two keys (rotation), enforce
and warn, by tag and by digest, the index's signature covering its platforms,
signatures as `.sig` tags and as referrers (tag schema, on the real Distribution)."""
import json

import aiohttp
import pytest

from edgecache.artifacts import is_artifact_only
from edgecache.config import build
from edgecache.errors import ConfigError
from edgecache.policy.cosign import Signature, check
from edgecache.policy.keys import load_public_key
from edgecache.server.registry_api import SERVICES
from tests.support.edge import EdgeServer, make_config
from tests.support.images import Blob, make_image, make_index, push
from tests.support.supplychain import (FIXTURES, Key, ReferrersUpstream, payload, push_artifact,
                                       schema_tag, sign_into, signature_manifest)

HOST = "central.example"
ACCEPT = ", ".join(["application/vnd.oci.image.index.v1+json",
                    "application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.docker.distribution.manifest.v2+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json"])
COSIGN = FIXTURES / "cosign"


# -- signatures alone ----------------------------------------------------------------

def _fixture():
    p = (COSIGN / "payload.json").read_bytes()
    return p, (COSIGN / "signature.b64").read_text().strip(), load_public_key((COSIGN / "key.pub").read_bytes())


FIXTURE_DIGEST = "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00"


def test_a_signature_made_by_cosign_verifies_and_nothing_else_does():
    p, sig, key = _fixture()
    same = lambda ref: ref == "192.168.64.2:5000/cosign-signed-single-sample"   # noqa: E731
    assert check(Signature(p, sig, "fixture"), [key], FIXTURE_DIGEST, same) is None
    # The manifest it names is the one beside it.
    import hashlib
    assert "sha256:" + hashlib.sha256((COSIGN / "manifest.json").read_bytes()).hexdigest() == FIXTURE_DIGEST
    tampered = p.replace(b'"optional":null', b'"optional":{"a":"b"}')
    assert "does not verify" in check(Signature(tampered, sig, "f"), [key], FIXTURE_DIGEST, same)
    assert "another repository" in check(Signature(p, sig, "f"), [key], FIXTURE_DIGEST, lambda r: False)
    assert "signs sha256:634a" in check(Signature(p, sig, "f"), [key], "sha256:" + "0" * 64, same)
    other = load_public_key(Key().public_pem())
    assert "does not verify" in check(Signature(p, sig, "f"), [other], FIXTURE_DIGEST, same)
    # Two keys (rotation): either verifies.
    assert check(Signature(p, sig, "f"), [other, key], FIXTURE_DIGEST, same) is None
    assert "not base64" in check(Signature(p, "!!", "f"), [key], FIXTURE_DIGEST, same)


@pytest.mark.parametrize("kind", ["ecdsa", "rsa", "ed25519"])
def test_each_kind_of_cosign_key(kind):
    k = Key(kind)
    p = payload("central.example/app", "sha256:" + "1" * 64)
    key = load_public_key(k.public_pem())
    assert check(Signature(p, k.sign(p), "t"), [key], "sha256:" + "1" * 64, lambda r: True) is None
    assert check(Signature(p + b" ", k.sign(p), "t"), [key], "sha256:" + "1" * 64, lambda r: True)


def test_policy_config_errors_name_the_key(tmp_path):
    key = Key().write(tmp_path / "k.pub")
    (tmp_path / "bad.pub").write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    (tmp_path / "weak.pub").write_bytes(weak.public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))

    def cfg(rule):
        doc = make_config(tmp_path / "d", {HOST: "http://127.0.0.1:1", "x": "http://127.0.0.1:2",
                                           "docker.io": "http://127.0.0.1:3"}, policy=[rule])
        return build(doc, source="t", env={}, uid=0, base=tmp_path)

    ok = cfg({"match": f"{HOST}/pos/*", "require": "signature", "keys": [str(key)]})
    assert ok.policy[0].mode == "enforce" and ok.policy[0].name == "policy-1"
    hub = cfg({"match": ["index.docker.io/nginx", "docker.io/bitnami/*"], "require": "signature",
               "keys": [str(key)]})
    assert hub.policy[0].match == ("docker.io/library/nginx", "docker.io/bitnami/*")
    for rule, where in (({"match": "x/*", "require": "signature", "keys": ["k.pub"], "mode": "audit"},
                         "policy[0].mode"),
                        ({"match": "x/*", "require": "sbom", "keys": ["k.pub"]}, "policy[0].require"),
                        ({"match": [], "require": "signature", "keys": ["k.pub"]}, "policy[0].match"),
                        ({"match": "x/*", "require": "signature", "keys": ["nope.pub"]}, "policy[0].keys[0]"),
                        ({"match": "x/*", "require": "signature", "keys": ["bad.pub"]}, "policy[0].keys[0]"),
                        ({"match": "x/*", "require": "signature", "keys": ["weak.pub"]}, "policy[0].keys[0]"),
                        ({"match": "x/*", "require": "signature", "keys": ["k.pub"], "when": 1},
                         "policy[0].when"),
                        ({"match": "elsewhere.example/*", "require": "signature", "keys": ["k.pub"]},
                         "policy[0].match")):
        with pytest.raises(ConfigError) as e:
            cfg(rule)
        assert e.value.key == where, (rule, e.value)


def test_only_artifacts_nothing_can_run_are_exempt():
    img = make_image(401, layers=1, layer_size=1024)
    assert not is_artifact_only(img.manifest)
    # A runnable image that names a subject is still an image.
    doc = json.loads(img.manifest)
    doc["subject"] = {"mediaType": img.media_type, "digest": "sha256:" + "2" * 64, "size": 1}
    assert not is_artifact_only(json.dumps(doc).encode())
    p = payload("x/y", img.digest)
    assert is_artifact_only(signature_manifest([(p, "c2ln")]).manifest.data)


# -- through the cache -------------------------------------------------------------

async def _manifest(s, edge, repo, ref, ns=None):
    params = {"ns": ns} if ns else None
    async with s.get(f"{edge.url}/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT},
                     params=params) as r:
        return r.status, await r.read()


async def test_the_real_cosign_fixture_through_the_cache(tmp_path):
    """containers/image's cosign-signed sample, served by a registry of ours as
    192.168.64.2:5000 (its name in the signature), the cache verifying it offline."""
    p, sig, _ = _fixture()
    repo = "cosign-signed-single-sample"
    manifest = Blob("application/vnd.docker.distribution.manifest.v2+json",
                    (COSIGN / "manifest.json").read_bytes())
    sig_layer = Blob("application/vnd.dev.cosign.simplesigning.v1+json", p)
    sig_manifest = signature_manifest([(p, sig)])
    assert sig_manifest.blobs[1] == sig_layer
    async with ReferrersUpstream() as up:
        up.put(repo, "latest", manifest)
        up.put(repo, schema_tag(FIXTURE_DIGEST, "sig"), sig_manifest)
        doc = make_config(tmp_path / "data", {"192.168.64.2:5000": up.url}, tag_ttl="1s", policy=[
            {"name": "sample", "match": "192.168.64.2:5000/*", "require": "signature",
             "keys": [str(COSIGN / "key.pub")]}])
        async with EdgeServer(doc) as edge, aiohttp.ClientSession() as s:
            status, body = await _manifest(s, edge, repo, "latest", "192.168.64.2:5000")
            assert status == 200 and body == manifest.data
        other = {**doc, "data_dir": str(tmp_path / "other"),
                 "policy": [{**doc["policy"][0], "keys": [str(Key().write(tmp_path / "o.pub"))]}]}
        async with EdgeServer(other) as edge, aiohttp.ClientSession() as s:
            status, body = await _manifest(s, edge, repo, "latest", "192.168.64.2:5000")
            assert status == 403 and "does not verify" in body.decode()
        await up.stop()
        async with EdgeServer(doc) as edge, aiohttp.ClientSession() as s:       # offline, fresh
            status, body = await _manifest(s, edge, repo, FIXTURE_DIGEST, "192.168.64.2:5000")
            assert status == 200, body


@pytest.mark.integration
async def test_enforce_and_warn_by_tag_and_digest_online_and_offline(tmp_path, registry):
    k1, k2, k3 = Key("ecdsa"), Key("ed25519"), Key("rsa")
    url = registry.url

    def image(n, repo, tag="v1"):
        img = make_image(400 + n, layers=1, layer_size=2048)
        push(url, repo, tag, img)
        return img

    signed = image(1, "signed/a")
    sign_into(url, "signed/a", f"{HOST}/signed/a", signed.digest, k1)
    rotated = image(2, "signed/b")
    sign_into(url, "signed/b", f"{HOST}/signed/b", rotated.digest, k2)
    unsigned = image(3, "signed/c")
    wrong_digest = image(4, "signed/d")
    p = payload(f"{HOST}/signed/d", signed.digest)            # a good signature of another image
    push_artifact(url, "signed/d", schema_tag(wrong_digest.digest, "sig"),
                  signature_manifest([(p, k1.sign(p))]))
    wrong_key = image(5, "signed/e")
    sign_into(url, "signed/e", f"{HOST}/signed/e", wrong_key.digest, k3)
    tampered = image(6, "signed/f")
    p = payload(f"{HOST}/signed/f", tampered.digest)
    push_artifact(url, "signed/f", schema_tag(tampered.digest, "sig"),
                  signature_manifest([(p.replace(b"null", b'{"x":1}'), k1.sign(p))]))
    other_repo = image(7, "signed/g")                     # signed, but for signed/a's name
    p = payload(f"{HOST}/signed/a", other_repo.digest)
    push_artifact(url, "signed/g", schema_tag(other_repo.digest, "sig"),
                  signature_manifest([(p, k1.sign(p))]))
    idx = make_index(408, arches=("amd64", "arm64"), layers=1, layer_size=2048)
    push(url, "signed/idx", "v1", idx)
    sign_into(url, "signed/idx", f"{HOST}/signed/idx", idx.digest, k1)
    by_referrer = image(9, "signed/ref")
    sign_into(url, "signed/ref", f"{HOST}/signed/ref", by_referrer.digest, k2, as_referrer=True)
    warned = image(10, "warned/x")
    free = image(11, "free/y")

    keys = [str(k1.write(tmp_path / "k1.pub")), str(k2.write(tmp_path / "k2.pub"))]
    doc = make_config(tmp_path / "data", {HOST: url}, default=HOST, policy=[
        {"name": "branch-signed", "match": [f"{HOST}/signed/*"], "require": "signature", "keys": keys},
        {"name": "watch", "match": f"{HOST}/warned/*", "require": "signature", "keys": keys,
         "mode": "warn"}])
    good = [("signed/a", signed), ("signed/b", rotated), ("signed/idx", idx), ("signed/ref", by_referrer)]
    bad = [("signed/c", unsigned, "no signature found"), ("signed/d", wrong_digest, "signs sha256:"),
           ("signed/e", wrong_key, "does not verify"), ("signed/f", tampered, "does not verify"),
           ("signed/g", other_repo, "another repository")]

    async def all_checks(edge, s):
        for repo, img in good:
            for ref in ("v1", img.digest):
                status, body = await _manifest(s, edge, repo, ref)
                assert status == 200, (repo, ref, body)
        for child in idx.images:          # the index's signature covers its platforms
            status, body = await _manifest(s, edge, "signed/idx", child.digest)
            assert status == 200, body
        for repo, img, why in bad:
            for ref in ("v1", img.digest):
                status, body = await _manifest(s, edge, repo, ref)
                # Nor as a "sibling" (no shared secret: anyone can send the header).
                async with s.get(f"{edge.url}/v2/{repo}/manifests/{ref}",
                                 headers={"Accept": ACCEPT, "X-Edgecache-Hop": "n1"}) as r:
                    assert r.status in (403, 404), (repo, r.status)
                err = json.loads(body)["errors"][0]
                assert status == 403 and err["code"] == "DENIED", (repo, body)
                assert "branch-signed" in err["detail"] and why in err["detail"], (repo, err)
        for repo in ("warned/x", "free/y"):
            status, _ = await _manifest(s, edge, repo, "v1")
            assert status == 200

    async with EdgeServer(doc) as edge, aiohttp.ClientSession() as s:
        await all_checks(edge, s)
        sig_gets = registry.count("GET", rf"/v2/signed/a/manifests/{schema_tag(signed.digest, 'sig')}")
        verified = 'edgecache_policy_decisions_total{result="verified",rule="branch-signed"} '

        async def counted() -> tuple[str, float]:
            async with s.get(f"{edge.url}/metrics") as r:
                text = await r.text()
            return text, float(text.split(verified)[1].split()[0])
        _, before = await counted()
        for _ in range(20):                               # decided once: by tag costs nothing more
            assert (await _manifest(s, edge, "signed/a", "v1"))[0] == 200
        assert registry.count("GET", rf"/v2/signed/a/manifests/{schema_tag(signed.digest, 'sig')}") \
            == sig_gets
        metrics, after = await counted()
        assert after - before == 20                       # yet every answer is counted
        assert 'edgecache_policy_decisions_created{result="verified",rule="branch-signed"}' in metrics
        assert 'edgecache_policy_decisions_total{result="warned",rule="watch"}' in metrics
        assert 'edgecache_policy_decisions_total{result="denied",rule="branch-signed"}' in metrics
        # The index's platforms forgotten, as under 65,536 newer entries, and what the
        # index's signature covers too: the index asked again (decided before, so cleared
        # without a check) notes its platforms anew, and each is served on its signature.
        policy = edge.app[SERVICES].policy
        platforms = {c.digest for c in idx.images}
        policy._parents.clear()
        for key in [k for k in policy._decisions if k[1] in platforms]:
            del policy._decisions[key]
        assert (await _manifest(s, edge, "signed/idx", "v1"))[0] == 200
        for child in idx.images:
            status, body = await _manifest(s, edge, "signed/idx", child.digest)
            assert status == 200, body
        del warned, free
    registry.stop()
    # The WAN down, a restarted cache (no decision remembered): the cached signatures decide.
    async with EdgeServer(doc) as edge, aiohttp.ClientSession() as s:
        await all_checks(edge, s)

