"""Signatures, SBOMs and attestations as the tools push them, made here:

- cosign's simple-signing signatures (payload JSON + base64 signature in the layer
  annotation), signed with `cryptography` keys of the three kinds cosign uses;
- cosign's `.sig` tag (its classic layout) and OCI 1.1 referrers (`subject`);
- the referrers tag schema index a client maintains on a registry without the
  referrers API (as oras and cosign do on Distribution 2.8);
- ReferrersUpstream: a registry of the tests' own that implements the referrers
  API (pages, artifactType filter, ETag), serving what it was given and counting.
"""
from __future__ import annotations

import base64
import json
import urllib.error
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from .httpserver import HttpServer
from .images import MANIFEST_TYPES, Blob, OCI_INDEX, OCI_MANIFEST, _request, push_blob, push_manifest, sha256_digest

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_SIG_ARTIFACT = "application/vnd.dev.cosign.artifact.sig.v1+json"
SPDX = "application/spdx+json"
IN_TOTO = "application/vnd.in-toto+json"
EMPTY = Blob("application/vnd.oci.empty.v1+json", b"{}")
FIXTURES = Path(__file__).parent.parent / "fixtures"


class Key:
    """A cosign-style key pair: kind is "ecdsa" (P-256), "rsa" or "ed25519"."""

    def __init__(self, kind: str = "ecdsa") -> None:
        self.kind = kind
        if kind == "ecdsa":
            self.private = ec.generate_private_key(ec.SECP256R1())
        elif kind == "rsa":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            self.private = ed25519.Ed25519PrivateKey.generate()

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.public_pem())
        return path

    def sign(self, message: bytes) -> str:
        if self.kind == "ecdsa":
            raw = self.private.sign(message, ec.ECDSA(hashes.SHA256()))
        elif self.kind == "rsa":
            raw = self.private.sign(message, padding.PKCS1v15(), hashes.SHA256())
        else:
            raw = self.private.sign(message)
        return base64.b64encode(raw).decode()


def payload(reference: str, digest: str) -> bytes:
    """cosign's simple-signing payload, laid out as cosign writes it."""
    return json.dumps({"critical": {"identity": {"docker-reference": reference},
                                    "image": {"docker-manifest-digest": digest},
                                    "type": "cosign container image signature"},
                       "optional": None}, separators=(",", ":")).encode()


@dataclass
class Artifact:
    """A manifest and the blobs it names (to push, or to serve)."""

    manifest: Blob
    blobs: tuple[Blob, ...]

    @property
    def digest(self) -> str:
        return self.manifest.digest


def signature_manifest(signatures: list[tuple[bytes, str]], *, subject: dict | None = None
                       ) -> Artifact:
    """cosign's signature image: one simple-signing layer per (payload, signature).
    Without subject, the classic `.sig` tag layout; with it, an OCI 1.1 referrer."""
    layers = [Blob(SIMPLE_SIGNING, p) for p, _ in signatures]
    config = EMPTY if subject is not None else Blob(
        "application/vnd.oci.image.config.v1+json",
        json.dumps({"architecture": "", "os": "", "rootfs": {"type": "layers", "diff_ids": []}})
        .encode())
    doc: dict = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.descriptor(),
                 "layers": [{**b.descriptor(),
                             "annotations": {"dev.cosignproject.cosign/signature": s}}
                            for b, (_, s) in zip(layers, signatures)]}
    if subject is not None:
        doc["artifactType"] = COSIGN_SIG_ARTIFACT
        doc["subject"] = subject
    return Artifact(Blob(OCI_MANIFEST, json.dumps(doc).encode()), (config, *layers))


def referrer(subject: Blob, artifact_type: str, content: bytes, media_type: str | None = None,
             annotations: dict[str, str] | None = None) -> Artifact:
    """An OCI 1.1 artifact attached to subject (an SBOM, an attestation)."""
    layer = Blob(media_type or artifact_type, content)
    doc: dict = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
                 "config": EMPTY.descriptor(), "layers": [layer.descriptor()],
                 "subject": subject.descriptor()}
    if annotations:
        doc["annotations"] = annotations
    return Artifact(Blob(OCI_MANIFEST, json.dumps(doc).encode()), (EMPTY, layer))


def descriptor_of(a: Artifact) -> dict:
    doc = json.loads(a.manifest.data)
    d = {"mediaType": a.manifest.media_type, "digest": a.digest, "size": a.manifest.size}
    if doc.get("artifactType"):
        d["artifactType"] = doc["artifactType"]
    if doc.get("annotations"):
        d["annotations"] = doc["annotations"]
    return d


def schema_tag(digest: str, suffix: str | None = None) -> str:
    alg, _, hexpart = digest.partition(":")
    return f"{alg}-{hexpart}" + (f".{suffix}" if suffix else "")


def push_artifact(registry_url: str, repo: str, ref: str, a: Artifact) -> str:
    for b in a.blobs:
        push_blob(registry_url, repo, b)
    return push_manifest(registry_url, repo, ref, a.manifest)


def attach(registry_url: str, repo: str, a: Artifact) -> None:
    """Push a referrer to a registry without the referrers API the way clients do:
    the manifest by digest, then its descriptor added to the `<alg>-<hex>` tag's index."""
    subject = json.loads(a.manifest.data)["subject"]["digest"]
    push_artifact(registry_url, repo, a.digest, a)
    tag = schema_tag(subject)
    index = _manifest_or_none(registry_url, repo, tag, OCI_INDEX) or {
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    index["manifests"].append(descriptor_of(a))
    push_manifest(registry_url, repo, tag, Blob(OCI_INDEX, json.dumps(index).encode()))


def sign_into(registry_url: str, repo: str, reference: str, digest: str, key: Key, *,
              as_referrer: bool = False) -> Artifact:
    """Sign an image the way cosign does and push the signature: into the `.sig` tag
    (appending to the signatures already there), or as a referrer."""
    p = payload(reference, digest)
    if as_referrer:
        media_type, size = _head(registry_url, repo, digest)
        a = signature_manifest([(p, key.sign(p))],
                               subject={"mediaType": media_type, "digest": digest, "size": size})
        attach(registry_url, repo, a)
        return a
    existing = _sig_layers(registry_url, repo, schema_tag(digest, "sig"))
    a = signature_manifest([*existing, (p, key.sign(p))])
    push_artifact(registry_url, repo, schema_tag(digest, "sig"), a)
    return a


def _head(registry_url: str, repo: str, digest: str) -> tuple[str, int]:
    with _request("HEAD", f"{registry_url}/v2/{repo}/manifests/{digest}",
                  headers={"Accept": ", ".join(MANIFEST_TYPES)}) as r:
        return r.headers["Content-Type"], int(r.headers["Content-Length"])


def _manifest_or_none(registry_url: str, repo: str, tag: str, accept: str) -> dict | None:
    try:
        with _request("GET", f"{registry_url}/v2/{repo}/manifests/{tag}",
                      headers={"Accept": accept}) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        e.close()
        if e.code != 404:
            raise
        return None


def _sig_layers(registry_url: str, repo: str, tag: str) -> list[tuple[bytes, str]]:
    doc = _manifest_or_none(registry_url, repo, tag, OCI_MANIFEST)
    if doc is None:
        return []
    out = []
    for layer in doc["layers"]:
        with _request("GET", f"{registry_url}/v2/{repo}/blobs/{layer['digest']}") as r:
            out.append((r.read(), layer["annotations"]["dev.cosignproject.cosign/signature"]))
    return out


class ReferrersUpstream(HttpServer):
    """A registry with the referrers API: manifests and blobs from dicts, referrers
    worked out from the manifests' `subject`, pages of `page` descriptors, the
    artifactType filter applied, an ETag per answer; every request counted."""

    def __init__(self, page: int = 2) -> None:
        self.manifests: dict[str, dict[str, Blob]] = {}     # repo -> ref (tag or digest) -> manifest
        self.blobs: dict[str, Blob] = {}
        self.page = page
        self.not_modified = 0                 # 304s answered (conditional GETs that matched)
        super().__init__([web.get("/v2/", self._base),
                          web.route("*", "/v2/{name:.+}/manifests/{ref}", self._manifest),
                          web.route("*", "/v2/{name:.+}/blobs/{digest}", self._blob),
                          web.get("/v2/{name:.+}/referrers/{digest}", self._referrers)])

    def put(self, repo: str, ref: str | None, a: "Artifact | Blob", blobs: tuple[Blob, ...] = ()) -> str:
        m = a.manifest if isinstance(a, Artifact) else a
        for b in (a.blobs if isinstance(a, Artifact) else blobs):
            self.blobs[b.digest] = b
        refs = self.manifests.setdefault(repo, {})
        refs[m.digest] = m
        if ref:
            refs[ref] = m
        return m.digest

    def count(self, kind: str) -> int:
        return sum(1 for _, path, _ in self.seen if f"/{kind}/" in path)

    async def _base(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _manifest(self, request: web.Request) -> web.Response:
        m = self.manifests.get(request.match_info["name"], {}).get(request.match_info["ref"])
        if m is None:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
        return web.Response(body=m.data, headers={"Content-Type": m.media_type,
                                                  "Docker-Content-Digest": m.digest})

    async def _blob(self, request: web.Request) -> web.Response:
        b = self.blobs.get(request.match_info["digest"])
        if b is None:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        return web.Response(body=b.data, headers={"Content-Type": "application/octet-stream",
                                                  "Docker-Content-Digest": b.digest})

    async def _referrers(self, request: web.Request) -> web.Response:
        repo, subject = request.match_info["name"], request.match_info["digest"]
        if repo not in self.manifests:       # as registries with the API answer for a repository they lack
            return web.json_response({"errors": [{"code": "NAME_UNKNOWN"}]}, status=404)
        found = []
        for ref, m in self.manifests.get(repo, {}).items():
            if ref != m.digest:
                continue
            doc = json.loads(m.data)
            if (doc.get("subject") or {}).get("digest") == subject:
                found.append(descriptor_of(Artifact(m, ())))
        found.sort(key=lambda d: d["digest"])
        wanted = request.query.get("artifactType")
        headers = {"Content-Type": OCI_INDEX}
        if wanted:
            found = [d for d in found if d.get("artifactType") == wanted]
            headers["OCI-Filters-Applied"] = "artifactType"
        start = int(request.query.get("start", "0"))
        chunk = found[start:start + self.page]
        if start + self.page < len(found):
            headers["Link"] = f'</v2/{repo}/referrers/{subject}?start={start + self.page}>; rel="next"'
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": chunk}).encode()
        etag = '"' + sha256_digest(body + str(start).encode()) + '"'
        headers["ETag"] = etag
        if request.headers.get("If-None-Match") == etag:
            self.not_modified += 1
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, headers=headers)
