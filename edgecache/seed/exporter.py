"""Exporting the pinned set as an OCI image layout tarball, to carry to another box
(`edgecache import` reads it back with every digest unchanged).

What is pinned: each pinned entry the syncer has completed (sync/state.py), and each
image imported with --pin (owner `imported:<registry>/<repository>@<digest>`, its tags
found in the tag records). With each, its cosign signature, attestation and SBOM
tags (`sha256-<hex>.sig|.att|.sbom`) when they are held here. Each image is named in
index.json by `io.containerd.image.name` and `org.opencontainers.image.ref.name`
(the whole reference, as skopeo writes it). An image some blob of which is not held
is left out, and said so. Gzip or zstd when the file name ends so.
"""
from __future__ import annotations

import asyncio
import gzip
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

import zstandard

from edgecache.pull.links import children
from edgecache.pull.manifests import media_type_of
from edgecache.reference import parse_digest
from edgecache.seed.images import NAME_ANNOTATIONS
from edgecache.store.blobs import BlobStore
from edgecache.store.meta import MetaStore
from edgecache.sync.state import SyncState

SUPPLY_CHAIN = (".sig", ".att", ".sbom")       # cosign's tag suffixes


@dataclass(frozen=True)
class Exportable:
    name: str                        # registry/repository:tag, or @digest
    upstream: str
    repo: str
    digest: str


@dataclass
class ExportReport:
    images: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    blobs: int = 0
    bytes: int = 0

    def as_dict(self) -> dict:
        return {"images": self.images, "skipped": self.skipped, "blobs": self.blobs,
                "bytes": self.bytes}


def pinned_set(state: SyncState, store: BlobStore, meta: MetaStore) -> list[Exportable]:
    """The pinned images, and the signature tags of each held here."""
    found: dict[tuple[str, str, str], Exportable] = {}
    for img in state.images["pinned"].values():
        if img.tag:
            up, repo, tag = img.tag
            found[(up, repo, img.digest)] = Exportable(f"{up}/{repo}:{tag}", up, repo, img.digest)
        elif "/" in img.ref:
            up, _, rest = img.ref.partition("/")
            repo = rest.partition("@")[0]
            found[(up, repo, img.digest)] = Exportable(f"{up}/{repo}@{img.digest}", up, repo,
                                                       img.digest)
    tags = meta.all_tags()
    for owner in store.index.owners():
        kind, _, rest = owner.partition(":")
        if kind != "imported" or "@" not in rest:
            continue
        name, _, digest = rest.partition("@")
        up, _, repo = name.partition("/")
        named = [t for (u, r, t), recs in tags if (u, r) == (up, repo)
                 and any(rec.digest == digest for rec in recs.values())]
        for t in named or [None]:
            key = f"{up}/{repo}:{t}" if t else f"{up}/{repo}@{digest}"
            found.setdefault((up, repo, digest + (t or "")), Exportable(key, up, repo, digest))
    images = sorted(found.values(), key=lambda i: i.name)     # the same order every time
    for img in list(images):
        hexpart = parse_digest(img.digest).hex
        for (u, r, t), recs in tags:
            if (u, r) == (img.upstream, img.repo) and t.startswith(f"sha256-{hexpart}") \
                    and t.endswith(SUPPLY_CHAIN):
                for rec in recs.values():
                    images.append(Exportable(f"{u}/{r}:{t}", u, r, rec.digest))
    return list({(i.name, i.digest): i for i in images}.values())


def open_compressed(out: Path) -> BinaryIO:
    """A file to write, gzip or zstd compressed when its name ends so."""
    if out.name.endswith((".gz", ".tgz")) or out.name.endswith((".gz.part", ".tgz.part")):
        return gzip.open(out, "wb")                              # type: ignore[return-value]
    if out.name.endswith((".zst", ".zst.part")):
        return zstandard.open(out, "wb")                         # type: ignore[return-value]
    return open(out, "wb")


class Exporter:
    def __init__(self, store: BlobStore) -> None:
        self.store = store

    async def run(self, images: list[Exportable], out: Path,
                  progress: Callable[[str], None] = lambda _m: None) -> ExportReport:
        report = ExportReport()
        entries, blobs = [], {}
        for img in images:
            digests = await self._closure(img.digest)
            if digests is None:
                report.skipped.append(f"{img.name}: not every blob of {img.digest} is held here")
                progress(f"{img.name}: skipped, incomplete")
                continue
            body = await self.store.read_bytes(parse_digest(img.digest))
            entries.append({"mediaType": media_type_of(body), "digest": img.digest,
                            "size": len(body),
                            "annotations": {k: img.name for k in NAME_ANNOTATIONS}})
            for d in digests:
                blobs[d] = self.store.size(parse_digest(d)) or 0
            report.images.append(img.name)
            progress(f"{img.name}: {len(digests)} blobs")
        index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": entries}, indent=1).encode()
        tmp = out.with_name(f".{out.name}.part")
        try:
            with self._leases(blobs):
                await asyncio.to_thread(self._write, tmp, index, blobs)
            await asyncio.to_thread(tmp.replace, out)
        except BaseException:
            await asyncio.to_thread(tmp.unlink, True)
            raise
        report.blobs, report.bytes = len(blobs), sum(blobs.values())
        progress(f"{out}: {len(report.images)} image(s), {report.blobs} blobs, {report.bytes} bytes")
        return report

    async def _closure(self, digest: str) -> list[str] | None:
        """The digest and everything it names, all held here; None when one is not."""
        seen: list[str] = []
        todo = [digest]
        while todo:
            d = todo.pop()
            if d in seen:
                continue
            pd = parse_digest(d)
            size = self.store.size(pd)
            if size is None:
                return None
            seen.append(d)
            if size <= 4 << 20:
                body = await self.store.read_bytes(pd)
                if body[:1] == b"{":
                    todo += children(body)
        return seen

    def _leases(self, blobs: dict[str, int]):
        from contextlib import ExitStack
        stack = ExitStack()
        for d in blobs:
            stack.enter_context(self.store.lease(parse_digest(d)))
        return stack

    def _write(self, tmp: Path, index: bytes, blobs: dict[str, int]) -> None:
        with open_compressed(tmp) as f, tarfile.open(fileobj=f, mode="w|") as tf:
            def add(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            add("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
            add("index.json", index)
            for d in blobs:
                pd = parse_digest(d)
                tf.add(str(self.store.path(pd)), arcname=f"blobs/{pd.algorithm}/{pd.hex}",
                       recursive=False)
