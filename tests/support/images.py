"""Synthetic OCI / Docker schema2 images built in memory, pushed over the plain registry HTTP API or written
as an OCI image layout (for `skopeo copy oci:DIR:TAG ...`).

Layers are real gzip'd tars of pseudo-random (incompressible) bytes, so sizes on the wire are real and every
blob is deterministic for a given seed.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import random
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

Media = Literal["oci", "docker"]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# What a client sends in Accept to get any of the above manifests back unconverted.
MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)

_TYPES: dict[str, dict[str, str]] = {
    "oci": {"manifest": OCI_MANIFEST, "index": OCI_INDEX, "config": OCI_CONFIG, "layer": OCI_LAYER},
    "docker": {"manifest": DOCKER_MANIFEST, "index": DOCKER_LIST, "config": DOCKER_CONFIG, "layer": DOCKER_LAYER},
}


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes = field(repr=False)

    @cached_property
    def digest(self) -> str:
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Image:
    """One platform's image: config + layers + the manifest that references them."""

    config: Blob
    layers: tuple[Blob, ...]
    manifest: bytes = field(repr=False)
    media_type: str
    platform: dict[str, str]

    @cached_property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """Config first, then layers: everything a registry serves under /blobs/ for this image."""
        return (self.config, *self.layers)

    @property
    def images(self) -> tuple["Image", ...]:
        return (self,)

    def manifest_blob(self) -> Blob:
        return Blob(self.media_type, self.manifest)


@dataclass(frozen=True)
class ImageIndex:
    """A multi-platform OCI index or Docker manifest list over per-platform Images."""

    index: bytes = field(repr=False)
    media_type: str
    images: tuple[Image, ...]

    @cached_property
    def digest(self) -> str:
        return sha256_digest(self.index)

    @property
    def manifest(self) -> bytes:
        return self.index

    @property
    def blobs(self) -> tuple[Blob, ...]:
        seen: dict[str, Blob] = {}
        for img in self.images:
            for b in img.blobs:
                seen.setdefault(b.digest, b)
        return tuple(seen.values())

    def manifest_blob(self) -> Blob:
        return Blob(self.media_type, self.index)


Artifact = Image | ImageIndex


def manifests(obj: Artifact) -> dict[str, Blob]:
    """Every manifest an artifact consists of, by digest (index first, then children)."""
    out = {obj.digest: obj.manifest_blob()}
    if isinstance(obj, ImageIndex):
        out.update({img.digest: img.manifest_blob() for img in obj.images})
    return out


def _layer(rng: random.Random, size: int, name: str) -> tuple[bytes, str]:
    """A gzip'd tar holding one file of random bytes; returns (gzip bytes, diff_id of the uncompressed tar)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        payload = rng.randbytes(size)
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode = len(payload), 0, 0o644
        tf.addfile(ti, io.BytesIO(payload))
    tar = raw.getvalue()
    # mtime=0 keeps the gzip header (and so the digest) deterministic.
    return gzip.compress(tar, compresslevel=1, mtime=0), sha256_digest(tar)


def make_image(
    seed: int, layers: int = 2, layer_size: int = 64 * 1024, arch: str = "amd64", media: Media = "oci"
) -> Image:
    """A deterministic single-platform image; the same (seed, arch) gives the same blobs in any media form."""
    t = _TYPES[media]
    # Seeding on (seed, arch) makes each arch of an index distinct yet equal to make_image(seed, arch=...).
    rng = random.Random(f"{seed}/{arch}")
    blobs, diff_ids = [], []
    for i in range(layers):
        gz, diff_id = _layer(rng, layer_size, f"data/{seed}-{arch}-{i}.bin")
        blobs.append(Blob(t["layer"], gz))
        diff_ids.append(diff_id)
    config = Blob(t["config"], _canonical({
        "architecture": arch,
        "os": "linux",
        "created": "2026-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"], "Labels": {"seed": str(seed)}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2026-01-01T00:00:00Z", "created_by": f"layer {i}"} for i in range(layers)],
    }))
    manifest = _canonical({
        "schemaVersion": 2,
        "mediaType": t["manifest"],
        "config": config.descriptor(),
        "layers": [b.descriptor() for b in blobs],
    })
    return Image(config, tuple(blobs), manifest, t["manifest"], {"architecture": arch, "os": "linux"})


def make_index(seed: int, arches: tuple[str, ...] = ("amd64", "arm64"), media: Media = "oci", **kw: int) -> ImageIndex:
    """A multi-arch OCI index / Docker manifest list; kw (layers, layer_size) go to make_image."""
    t = _TYPES[media]
    images = tuple(make_image(seed, arch=a, media=media, **kw) for a in arches)
    index = _canonical({
        "schemaVersion": 2,
        "mediaType": t["index"],
        "manifests": [
            {"mediaType": img.media_type, "digest": img.digest, "size": len(img.manifest), "platform": img.platform}
            for img in images
        ],
    })
    return ImageIndex(index, t["index"], images)


# ---- pushing over HTTP -------------------------------------------------------------------------------------------

def _request(method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None,
             auth: tuple[str, str] | None = None):
    headers = dict(headers or {})
    if auth is not None:     # a registry with htpasswd (Basic on every request)
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    return urllib.request.urlopen(req, timeout=60)


def _blob_exists(base: str, repo: str, digest: str, auth: tuple[str, str] | None = None) -> bool:
    try:
        with _request("HEAD", f"{base}/v2/{repo}/blobs/{digest}", auth=auth) as r:
            return r.status == 200
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 404:
            return False
        raise


def push_blob(registry_url: str, repo: str, blob: Blob, auth: tuple[str, str] | None = None) -> None:
    """Monolithic upload: POST to open a session, then one PUT with the body and ?digest=."""
    base = registry_url.rstrip("/")
    if _blob_exists(base, repo, blob.digest, auth):
        return
    with _request("POST", f"{base}/v2/{repo}/blobs/uploads/", data=b"", auth=auth) as r:
        location = r.headers["Location"]
    location = urllib.parse.urljoin(base + "/", location)  # Location may be relative
    sep = "&" if "?" in location else "?"
    put = f"{location}{sep}digest={urllib.parse.quote(blob.digest)}"
    with _request("PUT", put, data=blob.data, headers={"Content-Type": "application/octet-stream"},
                  auth=auth) as r:
        if r.status != 201:
            raise RuntimeError(f"blob upload {blob.digest}: HTTP {r.status}")


def push_manifest(registry_url: str, repo: str, ref: str, blob: Blob,
                  auth: tuple[str, str] | None = None) -> str:
    base = registry_url.rstrip("/")
    with _request("PUT", f"{base}/v2/{repo}/manifests/{ref}", data=blob.data,
                  headers={"Content-Type": blob.media_type}, auth=auth) as r:
        got = r.headers.get("Docker-Content-Digest", blob.digest)
    if got != blob.digest:
        raise RuntimeError(f"registry stored manifest as {got}, expected {blob.digest}")
    return got


def push(registry_url: str, repo: str, tag: str, obj: Artifact, auth: tuple[str, str] | None = None) -> str:
    """Push blobs, child manifests (by digest) and the top manifest (by tag); returns the top digest."""
    for b in obj.blobs:
        push_blob(registry_url, repo, b, auth)
    if isinstance(obj, ImageIndex):
        for img in obj.images:
            push_manifest(registry_url, repo, img.digest, img.manifest_blob(), auth)
    return push_manifest(registry_url, repo, tag, obj.manifest_blob(), auth)


# ---- OCI image layout ---------------------------------------------------------------------------------------------

def write_oci_layout(dir: Path | str, tag: str, obj: Artifact) -> str:
    """Add obj to an OCI image layout at dir under `tag` (replacing that tag if present); returns its digest.

    OCI media types only: skopeo's oci: transport silently skips Docker-typed entries in index.json.
    """
    if obj.media_type not in (OCI_MANIFEST, OCI_INDEX):
        raise ValueError(f"an OCI layout needs an OCI manifest or index, not {obj.media_type}")
    root = Path(dir)
    blobs_dir = root / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    for b in (*obj.blobs, *manifests(obj).values()):
        p = blobs_dir / b.digest.split(":", 1)[1]
        if not p.exists():
            p.write_bytes(b.data)
    index_path = root / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"schemaVersion": 2, "manifests": []}
    ref_key = "org.opencontainers.image.ref.name"
    index["manifests"] = [m for m in index["manifests"] if m.get("annotations", {}).get(ref_key) != tag]
    index["manifests"].append({**obj.manifest_blob().descriptor(), "annotations": {ref_key: tag}})
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index))
    os.replace(tmp, index_path)
    return obj.digest
