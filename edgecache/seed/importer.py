"""Importing archives into the store: every blob verified against its digest, then
renamed into place (unpacked on the store's file system), linked to the registry and
repository the image's name gives, its manifests recorded and its tag answering
offline (a tag record, as a prefetched image's). With `pin`, the image is pinned under
an owner of its own, `imported:<reference>@<digest>`, before its blobs land, so none
is evicted meanwhile; without, it is ordinary LRU content.

An image whose name is missing, or names a registry that is not an upstream here, is
skipped with a reason (content belongs to a route: it could not be served anyway).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import time
from collections.abc import Collection
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgecache.errors import ArchiveError
from edgecache.mediatypes import Accept
from edgecache.pull.manifests import media_type_of
from edgecache.reference import Digest, parse_digest
from edgecache.seed.archive import unpack
from edgecache.seed.images import ArchiveImage, read_images
from edgecache.store.blobs import BlobStore
from edgecache.store.meta import ManifestRecord, MetaStore, TagRecord
from edgecache.sync.lists import parse_ref

log = logging.getLogger("edgecache.seed")

ANY_KEY = Accept.parse([]).key()
ROOM_MARGIN = 64 << 20          # left free on data_dir's file system while unpacking


def room_under(data_dir: Path) -> int:
    """Bytes an archive may take on data_dir's file system (kept or unpacked)."""
    return max(0, shutil.disk_usage(data_dir).free - ROOM_MARGIN)


@dataclass
class Imported:
    ref: str
    digest: str
    blobs: int
    bytes: int
    pinned: bool


@dataclass
class ImportReport:
    images: list[Imported] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)     # why, per image or archive
    new_blobs: int = 0
    new_bytes: int = 0

    def as_dict(self) -> dict:
        return {"images": [vars(i) for i in self.images], "skipped": self.skipped,
                "new_blobs": self.new_blobs, "new_bytes": self.new_bytes}


def _hash(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Importer:
    def __init__(self, store: BlobStore, meta: MetaStore, upstreams: Collection[str], *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.meta = meta
        self.upstreams = upstreams
        self.clock = clock

    async def run(self, paths: list[Path], *, pin: bool = False,
                  progress: Callable[[str], None] = lambda _msg: None) -> ImportReport:
        report = ImportReport()
        for path in paths:
            try:
                await self._archive(Path(path), pin, progress, report)
            except Exception as e:   # noqa: BLE001 - an operator's file: say why, go on
                report.skipped.append(f"{path}: {e}" if isinstance(e, (ArchiveError, OSError))
                                      else f"{path}: not a usable archive ({type(e).__name__}: {e})")
                progress(f"{path}: skipped: {e}")
        await self.store.flush()
        await asyncio.to_thread(self.meta.flush)
        return report

    async def _archive(self, path: Path, pin: bool, progress: Callable[[str], None],
                       report: ImportReport) -> None:
        work = self.store.temp_path()
        try:
            room = room_under(self.store.data_dir)
            done = [0]

            def unpacked(n: int) -> None:
                done[0] += n
            progress(f"{path}: unpacking")
            size = await asyncio.to_thread(unpack, path, work, room, unpacked)
            images = await asyncio.to_thread(read_images, work)
            progress(f"{path}: {len(images)} image(s), {size} bytes")
            verified: set[str] = set()          # digests whose archive file was hashed
            for img in images:
                await self._image(img, pin, progress, report, verified)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def _image(self, img: ArchiveImage, pin: bool, progress: Callable[[str], None],
                     report: ImportReport, verified: set[str]) -> None:
        if img.name is None:
            report.skipped.append(f"{img.digest}: the archive gives it no name")
            progress(f"{img.digest}: skipped, no name")
            return
        try:
            ref = parse_ref(img.name, self.upstreams)
        except ValueError as e:
            report.skipped.append(f"{img.name}: {e}")
            progress(f"{img.name}: skipped: {e}")
            return
        owner = (ref.upstream, ref.repo)
        digests = [*img.written, *img.files]
        pin_owner = f"imported:{ref.upstream}/{ref.repo}@{img.digest}"
        name = f"{ref.upstream}/{ref.repo}" + (f":{ref.tag}" if ref.tag else "")
        if pin:
            await self.store.pin_many(digests, pin_owner)
        try:
            with ExitStack() as leases:
                # Held while the image comes in: an import bigger than the budget must
                # not evict its own first blobs before its last one lands.
                for d in digests:
                    leases.enter_context(self.store.lease(parse_digest(d)))
                total = await self._bring(img, name, owner, progress, report, verified)
                missing = [d for d in digests if not self.store.has(parse_digest(d))]
                if missing:
                    raise ArchiveError(f"{len(missing)} blob(s) evicted meanwhile: the budget "
                                       "is too small for it (import it with --pin)")
        except BaseException:
            if pin:
                await self.store.unpin_many(digests, pin_owner)
            raise
        if ref.tag is not None:
            self._tag((ref.upstream, ref.repo, ref.tag), img)
        report.images.append(Imported(name, img.digest, len(digests), total, pin))
        progress(f"{name}: imported {img.digest} ({len(digests)} blobs{', pinned' if pin else ''})")
        log.info("imported %s as %s (%d blobs%s)", name, img.digest, len(digests),
                 ", pinned" if pin else "")

    async def _bring(self, img: ArchiveImage, name: str, owner: tuple[str, str],
                     progress: Callable[[str], None], report: ImportReport,
                     verified: set[str]) -> int:
        """Every blob of the image verified and in the store, linked to its route."""
        total = 0
        for digest, body in img.written.items():          # manifests written here
            new = not self.store.has(parse_digest(digest))
            await self.store.put_bytes(parse_digest(digest), body, link=owner)
            self._record(digest, body)
            total += len(body)
            report.new_blobs += new
            report.new_bytes += len(body) if new else 0
        # Manifests read before their files are renamed into the store; recorded once
        # verified (below), never from unverified bytes.
        bodies = {d: await asyncio.to_thread(img.files[d].read_bytes) for d in img.manifests
                  if img.files[d].exists()}
        for n, (digest, path) in enumerate(img.files.items(), 1):
            size, new = await self._blob(parse_digest(digest), path, owner, verified)
            total += size
            report.new_blobs += new
            report.new_bytes += size if new else 0
            progress(f"{name}: {n}/{len(img.files)} blobs")
        for digest, body in bodies.items():
            self._record(digest, body)
        return total

    def _tag(self, key: tuple[str, str, str], img: ArchiveImage) -> None:
        """The tag answers with the imported image, as of no time at all: an upstream
        that can be asked is asked first; offline, this is the answer (stale-if-error).
        A record the upstream confirmed is not replaced."""
        if any(rec.checked > 0 for rec in self.meta.tags(key).values()):
            return
        size = self.store.size(parse_digest(img.digest)) or 0
        self.meta.put_tag(key, ANY_KEY, TagRecord(img.digest, img.media_type, size, 0.0))

    def _record(self, digest: str, body: bytes) -> None:
        self.meta.put_manifest(ManifestRecord(digest, media_type_of(body), len(body)))

    async def _blob(self, digest: Digest, path: Path, owner: tuple[str, str],
                    verified: set[str]) -> tuple[int, bool]:
        """Verify the archive's file and rename it into the store (or, when the store
        has the digest already, link it: the archive has proven it holds the bytes);
        (size, whether it is new here)."""
        key = str(digest)
        if key not in verified:
            if not path.exists():
                raise ArchiveError(f"blob {digest} is gone from the unpacked archive")
            computed = await asyncio.to_thread(_hash, path, digest.algorithm)
            if computed != digest.hex:
                raise ArchiveError(f"blob {digest} in the archive has the bytes of "
                                   f"{digest.algorithm}:{computed}")
            verified.add(key)
        size = self.store.size(digest)
        if size is not None:
            await self.store.link([digest], owner)
            return size, False
        if not path.exists():
            raise ArchiveError(f"blob {digest} was evicted during the import (budget too "
                               "small: import it with --pin)")
        size = path.stat().st_size
        await self.store.commit(path, digest, size=size, computed=digest.hex, written=size,
                                links=[owner])
        return size, True
