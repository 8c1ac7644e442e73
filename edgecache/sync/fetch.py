"""Fetching a whole image ahead of time through the pull path: the index, the
manifests of the wanted platforms, their configs and layers. Blobs go through
the same single-flight fills as client requests, so a client pulling the same
image meanwhile shares the WAN transfer, and blobs shared between images are
fetched once."""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from edgecache.artifacts import Selection, schema_tag
from edgecache.errors import (ManifestUnknown, NoMatchingPlatform, SupplyChainTooLarge,
                              UpstreamUnreachable)
from edgecache.jsondoc import document
from edgecache.mediatypes import INDEX_TYPES, Accept
from edgecache.pull.blobs import BlobService
from edgecache.pull.fill import Fill
from edgecache.pull.links import children
from edgecache.pull.manifests import ManifestService
from edgecache.pull.referrers import ReferrersService
from edgecache.pull.routing import Route
from edgecache.reference import parse_digest
from edgecache.sync.lists import ImageRef
from edgecache.upstream.client import Upstreams

ANY = Accept.parse([])
BLOBS_AT_ONCE = 3          # per image; the syncer bounds images at once
MAX_ARTIFACTS = 256        # referrers and cosign tags brought along with one image


@dataclass
class Progress:
    state: str = "pending"            # pending | fetching | complete | failed
    digest: str | None = None
    bytes_total: int = 0
    bytes_done: int = 0               # of blobs complete
    reason: str | None = None
    referrers: int = 0                # supply-chain artifacts brought along (signatures, SBOMs...)
    started: float | None = None
    finished: float | None = None
    fills: list[Fill] = field(default_factory=list, repr=False)

    def live_bytes(self) -> int:
        """Bytes done, counting blobs still being filled."""
        return min(self.bytes_total, self.bytes_done + sum(
            f.written for f in self.fills if not f.done))


@dataclass(frozen=True)
class SupplyChain:
    digests: tuple[str, ...]          # what to pin with the image: manifests, blobs, answers
    artifacts: int                    # referrers and cosign tags found


@dataclass(frozen=True)
class FetchedImage:
    digest: str
    media_type: str
    digests: tuple[str, ...]          # everything it is made of: manifests, configs, layers
    size: int


def _sized(body: bytes) -> dict[str, int]:
    """{digest: size} of a manifest's config and layers (an unsized one counts as big)."""
    doc = document(body) or {}
    layers = doc.get("layers")
    out: dict[str, int] = {}
    for d in [doc.get("config"), *(layers if isinstance(layers, list) else [])]:
        if isinstance(d, dict) and isinstance(d.get("digest"), str):
            size = d.get("size")
            out[d["digest"]] = size if isinstance(size, int) and size >= 0 else 1 << 40
    return out


def _platform(desc: dict) -> tuple[str, str, str]:
    p = desc.get("platform") or {}
    return p.get("os", ""), p.get("architecture", ""), p.get("variant", "")


def matches(wanted: str, desc: dict) -> bool:
    """"linux/arm64" matches any arm64 variant; "linux/arm/v7" only v7."""
    parts = wanted.split("/")
    os_, arch, variant = _platform(desc)
    if (parts[0], parts[1]) != (os_, arch):
        return False
    return len(parts) < 3 or parts[2] == variant


class ImageFetcher:
    def __init__(self, manifests: ManifestService, blobs: BlobService, upstreams: Upstreams,
                 referrers: ReferrersService | None = None,
                 supply_chain_bytes: int = 256 * 1024**2) -> None:
        self.manifests = manifests
        self.blobs = blobs
        self.upstreams = upstreams
        self.referrers = referrers
        self.supply_chain_bytes = supply_chain_bytes      # limits.supply_chain_bytes

    async def resolve(self, ref: ImageRef) -> str:
        """The tag's digest now, asked with HEAD only (a GET counts against rate limits)."""
        assert ref.tag is not None
        head = await self.upstreams.get(ref.upstream).head_manifest(ref.repo, ref.tag,
                                                                    ANY.for_upstream())
        if head.digest:
            return head.digest
        # No Docker-Content-Digest on HEAD: fall back to fetching the manifest.
        return (await self.manifests.get(Route(ref.upstream, ref.repo), ref.tag, ANY)).digest

    async def manifest_digests(self, ref: ImageRef, digest: str, platforms: tuple[str, ...]
                               ) -> tuple[str, list[str], dict[str, int]]:
        """(top media type, manifest digests, {blob digest: size}) of an image."""
        route = Route(ref.upstream, ref.repo)
        top = await self.manifests.get(route, digest, ANY)
        manifests = [top]
        if top.media_type in INDEX_TYPES:
            index = json.loads(top.body)
            chosen = [m for m in index.get("manifests", [])
                      if any(matches(p, m) for p in platforms)]
            if not chosen:
                raise NoMatchingPlatform(f"{ref} has no manifest for {', '.join(platforms)}")
            manifests += await asyncio.gather(*(self.manifests.get(route, m["digest"], ANY)
                                                for m in chosen))
        blobs: dict[str, int] = {}
        for m in manifests[1:] if top.media_type in INDEX_TYPES else manifests:
            doc = json.loads(m.body)
            if "config" not in doc:
                raise ManifestUnknown(f"{m.digest} is not an image manifest")
            for d in [doc["config"], *doc.get("layers", [])]:
                blobs[d["digest"]] = int(d.get("size", 0))
        return top.media_type, [m.digest for m in manifests], blobs

    async def fetch(self, ref: ImageRef, digest: str, platforms: tuple[str, ...],
                    progress: Progress, before_blobs=None) -> FetchedImage:
        """Fetch everything; await before_blobs(digests) once they are known, before the
        blobs move (the syncer pins them there, so nothing is evicted mid-fetch)."""
        route = Route(ref.upstream, ref.repo)
        media_type, manifest_digests, blobs = await self.manifest_digests(ref, digest, platforms)
        everything = tuple(manifest_digests + list(blobs))
        if before_blobs is not None:
            await before_blobs(everything)
        progress.bytes_total = sum(blobs.values())
        progress.bytes_done = 0
        try:
            await self._ensure_blobs(route, blobs, progress)
        finally:
            progress.fills.clear()
        return FetchedImage(digest, media_type, everything, progress.bytes_total)

    async def _ensure_blobs(self, route: Route, blobs: dict[str, int],
                            progress: Progress | None = None) -> None:
        """Every blob in the store, BLOBS_AT_ONCE at a time; all are waited for, then the
        first failure is raised. `progress` is told of fills and completed bytes."""
        gate = asyncio.Semaphore(BLOBS_AT_ONCE)

        async def one(d: str, size: int) -> None:
            async with gate:
                await self.blobs.ensure(route, parse_digest(d),
                                        on_fill=progress.fills.append if progress else None)
                if progress is not None:
                    progress.bytes_done += size

        results = await asyncio.gather(*(one(d, s) for d, s in blobs.items()),
                                       return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    async def supply_chain(self, ref: ImageRef, subjects: list[str], selection: Selection
                           ) -> SupplyChain:
        """What is attached to an image's manifests (the index and the platforms
        synced): its referrers of the selected artifact types (the API or the tag
        schema, asked afresh: signatures are often added after the image) and cosign's
        `.sig` / `.att` / `.sbom` tags, each fetched whole. Answers the upstream did
        not give now (the cache's own, stale) fail the image: it is not complete."""
        if selection.empty or self.referrers is None:
            return SupplyChain((), 0)
        route = Route(ref.upstream, ref.repo)
        pins: list[str] = []
        artifacts: list[str] = []
        for subject in subjects:
            ans = await self.referrers.get(route, parse_digest(subject), revalidate=True)
            if ans.stale:
                raise UpstreamUnreachable(ref.upstream, f"referrers of {subject}: not answered now")
            if ans.digest:
                pins.append(ans.digest)
            artifacts += [d["digest"] for d in ans.descriptors
                          if selection.selects(d.get("artifactType", ""))]
            for suffix in selection.cosign_suffixes():
                try:
                    m = await self.manifests.get(route, schema_tag(subject, suffix), ANY,
                                                 revalidate=True)
                except ManifestUnknown:
                    continue
                if m.stale:
                    raise UpstreamUnreachable(ref.upstream, f"{schema_tag(subject, suffix)}: "
                                              "not answered now")
                artifacts.append(m.digest)
        artifacts = list(dict.fromkeys(artifacts))[:MAX_ARTIFACTS]
        # Who pushes a referrer chooses its artifactType: what is pinned for it is
        # bounded, and counted before any blob moves.
        manifests: list[str] = []
        blobs: dict[str, int] = {}
        for digest in artifacts:
            found, named = await self._artifact(route, digest)
            manifests += found
            blobs.update(named)
        total = sum(blobs.values())
        if total > self.supply_chain_bytes:
            raise SupplyChainTooLarge(f"{ref}: {len(artifacts)} referrers of {total} bytes, over "
                                      f"limits.supply_chain_bytes ({self.supply_chain_bytes})")
        await self._ensure_blobs(route, blobs)
        pins += manifests + list(blobs)
        return SupplyChain(tuple(dict.fromkeys(pins)), len(artifacts))

    async def _artifact(self, route: Route, digest: str) -> tuple[list[str], dict[str, int]]:
        """An artifact's manifests (an index's, one level down too) and the blobs they
        name, with the sizes their descriptors give."""
        top = await self.manifests.get(route, digest, ANY)
        found, blobs = [top.digest], {}
        docs = [top]
        if top.media_type in INDEX_TYPES:
            for child in children(top.body)[:MAX_ARTIFACTS]:
                m = await self.manifests.get(route, child, ANY)
                found.append(m.digest)
                docs.append(m)
        for m in docs:
            if m.media_type in INDEX_TYPES:
                continue
            blobs.update(_sized(m.body))
        return found, blobs
