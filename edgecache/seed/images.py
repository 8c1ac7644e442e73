"""The images in an unpacked archive (seed/archive.py), in one shape whatever the format.

- An OCI image layout (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`: skopeo's
  oci-archive, `docker save` since Docker 25): each entry of index.json is an image,
  named by its `io.containerd.image.name` or `org.opencontainers.image.ref.name`
  annotation; its manifests and blobs keep their digests.
- A docker-archive (`manifest.json` listing Config, RepoTags and Layers: older
  `docker save`, skopeo's docker-archive:, K3s's air-gap image tarballs, many images in
  one): such an archive has no registry manifest, so one is written (Docker schema 2;
  OCI when a layer is zstd), from the config and layer files as they are; the same
  archive always gives the same manifest digest. An image is named by each of its
  RepoTags.

Blocking (hashes files): run on a thread.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from edgecache.errors import ArchiveError
from edgecache.mediatypes import OCI_MANIFEST
from edgecache.pull.links import children
from edgecache.pull.manifests import media_type_of
from edgecache.reference import parse_digest
from edgecache.seed.archive import compression

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
NAME_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")
MAX_MANIFEST = 4 << 20


@dataclass
class ArchiveImage:
    name: str | None                 # the reference it carries, None when it has none
    digest: str                      # of its top manifest (or index)
    media_type: str
    # Everything it is made of, by digest: files of the archive, and written manifests.
    files: dict[str, Path] = field(default_factory=dict)
    written: dict[str, bytes] = field(default_factory=dict)
    manifests: set[str] = field(default_factory=set)     # which of `files` are manifests


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


MAX_ENTRIES = 1_000_000        # blobs over all images of one archive (each image lists its own)


def read_images(root: Path) -> list[ArchiveImage]:
    if (root / "index.json").is_file() and (root / "oci-layout").is_file():
        return _bounded(_oci_layout(root))
    if (root / "manifest.json").is_file():
        return _bounded(_docker_archive(root))
    raise ArchiveError("neither an OCI image layout (index.json, oci-layout) nor a "
                       "docker-archive (manifest.json)")


def _bounded(images: list[ArchiveImage]) -> list[ArchiveImage]:
    if sum(len(i.files) for i in images) > MAX_ENTRIES:
        raise ArchiveError(f"more than {MAX_ENTRIES} blobs named over its images")
    return images


def _json(path: Path, what: str) -> object:
    try:
        if path.stat().st_size > MAX_MANIFEST:
            raise ArchiveError(f"{what} is larger than {MAX_MANIFEST} bytes")
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise ArchiveError(f"{what} does not read: {e}") from None


def _blob_path(root: Path, digest: str) -> Path:
    d = parse_digest(digest)
    return root / "blobs" / d.algorithm / d.hex


def _oci_layout(root: Path) -> list[ArchiveImage]:
    index = _json(root / "index.json", "index.json")
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list):
        raise ArchiveError("index.json lists no manifests")
    images = []
    named = 0
    for desc in entries:
        if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
            raise ArchiveError("index.json has an entry without a digest")
        notes = desc.get("annotations")
        notes = notes if isinstance(notes, dict) else {}
        name = next((notes[k] for k in NAME_ANNOTATIONS if isinstance(notes.get(k), str)), None)
        img = ArchiveImage(name, desc["digest"], "")
        todo = [(desc["digest"], True)]
        while todo:                      # the manifest, and what it names, down to the layers
            digest, is_manifest = todo.pop()
            if digest in img.files:
                continue
            path = _blob_path(root, digest)
            if not path.is_file():
                raise ArchiveError(f"{name or desc['digest']}: blob {digest} is not in the archive")
            img.files[digest] = path
            named += 1
            if named > MAX_ENTRIES:             # many entries naming the same many blobs
                raise ArchiveError(f"more than {MAX_ENTRIES} blobs named over its images")
            if is_manifest:
                img.manifests.add(digest)
                if path.stat().st_size > MAX_MANIFEST:
                    raise ArchiveError(f"manifest {digest} is larger than {MAX_MANIFEST} bytes")
                todo += _named(path.read_bytes())
        img.media_type = media_type_of(img.files[desc["digest"]].read_bytes())
        images.append(img)
    return images


def _named(body: bytes) -> list[tuple[str, bool]]:
    """What a manifest names, each with whether it is a manifest itself (an index's
    entries) or a blob (a config, a layer)."""
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise ArchiveError(f"a manifest does not read: {e}") from None
    kinds = {d: False for d in children(body)}
    for desc in doc.get("manifests") or [] if isinstance(doc, dict) else []:
        if isinstance(desc, dict) and isinstance(desc.get("digest"), str):
            kinds[desc["digest"]] = True
    return list(kinds.items())


def _docker_archive(root: Path) -> list[ArchiveImage]:
    entries = _json(root / "manifest.json", "manifest.json")
    if not isinstance(entries, list) or not entries:
        raise ArchiveError("manifest.json lists no images")
    hashed: dict[Path, tuple[str, int]] = {}

    def file(rel: object, what: str) -> tuple[Path, str, int]:
        if not isinstance(rel, str) or not rel or rel.startswith("/") or ".." in rel.split("/"):
            raise ArchiveError(f"manifest.json: {what} {rel!r} is not a path in the archive")
        path = root / rel
        if not path.is_file():
            raise ArchiveError(f"manifest.json: {what} {rel} is not in the archive")
        if path not in hashed:
            hashed[path] = (_sha256_file(path), path.stat().st_size)
        return path, *hashed[path]

    images = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("Layers"), list):
            raise ArchiveError("manifest.json has an entry without Layers")
        cpath, cdigest, csize = file(entry.get("Config"), "Config")
        layers = []
        zstd = False
        for rel in entry["Layers"]:
            path, digest, size = file(rel, "layer")
            with open(path, "rb") as f:
                kind = compression(f.read(4))
            zstd |= kind == "zstd"
            layers.append((path, digest, size, kind))
        oci = zstd
        suffix = {"gzip": "+gzip" if oci else ".gzip", "zstd": "+zstd", None: ""}
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
            "config": {"mediaType": OCI_CONFIG if oci else DOCKER_CONFIG, "size": csize,
                       "digest": cdigest},
            "layers": [{"mediaType": (OCI_LAYER if oci else DOCKER_LAYER) + suffix[kind],
                        "size": size, "digest": digest} for _, digest, size, kind in layers],
        }
        body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        mdigest = "sha256:" + hashlib.sha256(body).hexdigest()
        files = {cdigest: cpath, **{d: p for p, d, _, _ in layers}}
        tags = entry.get("RepoTags")
        for name in (tags if isinstance(tags, list) and tags else [None]):
            images.append(ArchiveImage(name if isinstance(name, str) else None, mdigest,
                                       doc["mediaType"], dict(files), {mdigest: body}))
    return images
