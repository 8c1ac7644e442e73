"""Finding an image's cosign signatures through the pull path: its `.sig` tag and
its signature referrers, their payload blobs fetched like any others. What the
cache holds answers when the upstream cannot be reached (the manifest and
referrers services serve their last known answers), so checks work offline."""
from __future__ import annotations

from typing import Protocol

from edgecache.artifacts import COSIGN_SIGNATURE_ANNOTATION, SIMPLE_SIGNING, group_of, schema_tag
from edgecache.errors import BlobUnknown, EdgecacheError, ManifestUnknown, UpstreamError
from edgecache.jsondoc import document
from edgecache.mediatypes import DOCKER_MANIFEST, OCI_MANIFEST, Accept
from edgecache.policy.cosign import MAX_PAYLOAD_BYTES, MAX_SIGNATURE_CHARS, Signature
from edgecache.pull.routing import Route
from edgecache.reference import Digest, parse_digest

MAX_SIGNATURES = 32          # payloads read per image (signing again and again adds layers)
MAX_REFERRERS_READ = 32      # signature referrers whose manifests are read per image
SIGNATURE_MANIFEST = Accept.parse([OCI_MANIFEST, DOCKER_MANIFEST])


class Manifests(Protocol):
    async def get(self, route: Route, reference: str, accept: Accept) -> object: ...


class Referrers(Protocol):
    async def get(self, route: Route, subject: Digest) -> object: ...


class Blobs(Protocol):
    async def ensure(self, route: Route, digest: Digest) -> int: ...


class Store(Protocol):
    async def read_bytes(self, digest: Digest) -> bytes: ...


class SignatureFinder:
    def __init__(self, manifests: Manifests, referrers: Referrers, blobs: Blobs,
                 store: Store) -> None:
        self.manifests = manifests
        self.referrers = referrers
        self.blobs = blobs
        self.store = store

    async def find(self, route: Route, digest: str) -> tuple[list[Signature], list[str]]:
        """The signatures found for a digest, and what could not be looked at (why)."""
        found: list[Signature] = []
        unseen: list[str] = []
        tag = schema_tag(digest, "sig")
        try:
            ans = await self.manifests.get(route, tag, SIGNATURE_MANIFEST)
        except ManifestUnknown:
            pass
        except (UpstreamError, EdgecacheError) as e:
            unseen.append(f"tag {tag}: {type(e).__name__}")
        else:
            found += await self._payloads(route, ans.body, f"tag {tag}", unseen)
        try:
            refs = await self.referrers.get(route, parse_digest(digest))
        except (UpstreamError, EdgecacheError) as e:
            unseen.append(f"referrers: {type(e).__name__}")
        else:
            candidates = [d for d in refs.descriptors
                          if group_of(d.get("artifactType", "")) == "signatures"]
            for d in candidates[:MAX_REFERRERS_READ]:
                if len(found) >= MAX_SIGNATURES:
                    break
                try:
                    m = await self.manifests.get(route, d["digest"], Accept.parse([]))
                except (UpstreamError, EdgecacheError) as e:
                    unseen.append(f"referrer {d['digest']}: {type(e).__name__}")
                    continue
                found += await self._payloads(route, m.body, f"referrer {d['digest']}", unseen)
        return found[:MAX_SIGNATURES], unseen

    async def _payloads(self, route: Route, body: bytes, where: str,
                        unseen: list[str]) -> list[Signature]:
        """The simple-signing layers of a signature manifest, with their payloads."""
        doc = document(body)
        layers = doc.get("layers") if doc is not None else None
        out: list[Signature] = []
        for layer in layers if isinstance(layers, list) else []:
            if len(out) >= MAX_SIGNATURES:
                break
            if not isinstance(layer, dict) or layer.get("mediaType") != SIMPLE_SIGNING:
                continue
            sig = (layer.get("annotations") or {}).get(COSIGN_SIGNATURE_ANNOTATION) \
                if isinstance(layer.get("annotations"), dict) else None
            size = layer.get("size")
            if not isinstance(sig, str) or len(sig) > MAX_SIGNATURE_CHARS or \
                    not isinstance(size, int) or not 0 < size <= MAX_PAYLOAD_BYTES:
                continue
            try:
                d = parse_digest(str(layer.get("digest")))
                await self.blobs.ensure(route, d)
                payload = await self.store.read_bytes(d)
            except (ValueError, BlobUnknown, UpstreamError, EdgecacheError, OSError) as e:
                unseen.append(f"{where} payload: {type(e).__name__}")
                continue
            if len(payload) <= MAX_PAYLOAD_BYTES:
                out.append(Signature(payload, sig, where))
        return out
