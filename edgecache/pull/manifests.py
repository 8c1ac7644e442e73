"""Manifests and tags.

By digest: the store answers when it holds the manifest; otherwise one GET
upstream, verified against the digest. By tag: an answer is fresh for tag_ttl
(no upstream traffic at all); after that the upstream is asked with HEAD only,
and a GET follows only when the digest is one we do not hold. When the upstream
fails (unreachable, timeout, 429, 5xx) the last known answer is served, marked
stale. Tag answers are kept per Accept list, so a client never gets a manifest
of a type it did not accept, nor a platform manifest where it asked for an index.
"""
from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from edgecache.errors import (DigestMismatch, ManifestUnknown, UpstreamError,
                              UpstreamNotFound, UpstreamDenied, is_unavailable)
from edgecache.mediatypes import OCI_MANIFEST, PREFERENCE, Accept
from edgecache.metrics import Metrics
from edgecache.pull.routing import Route
from edgecache.pull.singleflight import SingleFlight
from edgecache.reference import Digest, digest_of, is_digest, parse_digest, validate_tag
from edgecache.store.blobs import BlobStore
from edgecache.store.meta import ManifestRecord, MetaStore, TagRecord
from edgecache.upstream.client import UpstreamClient, Upstreams

log = logging.getLogger("edgecache.manifests")

MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ManifestAnswer:
    body: bytes
    digest: str
    media_type: str
    source: str               # "local" or "upstream"
    stale: bool = False


def media_type_of(content_type: str, body: bytes) -> str:
    """The upstream's Content-Type, or the manifest's own mediaType field."""
    ct = content_type.split(";")[0].strip()
    if ct and ct not in ("application/json", "text/plain", "application/octet-stream"):
        return ct
    try:
        mt = json.loads(body).get("mediaType")
    except (ValueError, AttributeError):
        mt = None
    return mt if isinstance(mt, str) and mt else OCI_MANIFEST


def _acceptable(answer: ManifestAnswer, accept: Accept) -> ManifestAnswer:
    """Like Distribution: a manifest of a type the client did not accept is "unknown" to it."""
    if not accept.accepts(answer.media_type):
        raise ManifestUnknown(f"{answer.media_type} found, but the client's Accept does not include it")
    return answer


class ManifestService:
    def __init__(self, store: BlobStore, meta: MetaStore, upstreams: Upstreams, metrics: Metrics,
                 tag_ttl: float, *, clock: Callable[[], float] = time.time,
                 body_cache_bytes: int = 32 * 1024 * 1024) -> None:
        self.store = store
        self.meta = meta
        self.upstreams = upstreams
        self.metrics = metrics
        self.tag_ttl = tag_ttl
        self.clock = clock
        self.flight = SingleFlight()
        self._bodies: OrderedDict[str, bytes] = OrderedDict()
        self._bodies_bytes = 0
        self._bodies_cap = body_cache_bytes
        # Pinned tags answer from the syncer, which switches them only once the new
        # image is complete (set by the runtime; None: every tag follows tag_ttl).
        self.tag_override: Callable[[tuple[str, str, str]], str | None] | None = None

    async def get(self, route: Route, reference: str, accept: Accept) -> ManifestAnswer:
        if is_digest(reference):
            return await self._by_digest(route, parse_digest(reference), accept)
        return await self._by_tag(route, validate_tag(reference), accept)

    # -- by digest -------------------------------------------------------------

    async def _by_digest(self, route: Route, d: Digest, accept: Accept) -> ManifestAnswer:
        local = await self._local(str(d))
        if local is not None:
            if not accept.accepts(local.media_type):
                raise ManifestUnknown(f"{d} is a {local.media_type}, which the client did not accept")
            self.metrics.hit("manifest")
            return local
        self.metrics.miss("manifest")
        client = self.upstreams.get(route.upstream)
        try:
            # Keyed by route and Accept too: the upstream and the Accept list decide
            # what answer comes back (Distribution refuses an index to a client that
            # does not accept indexes).
            answer = await self.flight.do(("digest", route, str(d), accept.key()),
                                          lambda: self._fetch(client, route, str(d), accept, d))
        except UpstreamNotFound:
            raise ManifestUnknown(f"{route.repo}@{d}") from None
        return _acceptable(answer, accept)

    # -- by tag ----------------------------------------------------------------

    async def _by_tag(self, route: Route, tag: str, accept: Accept) -> ManifestAnswer:
        key = (route.upstream, route.repo, tag)
        pinned = self.tag_override(key) if self.tag_override else None
        if pinned is not None:
            local = await self._local(pinned)
            if local is not None and accept.accepts(local.media_type):
                self.metrics.hit("manifest")
                return local
        rec = self.meta.tags(key).get(accept.key())
        if rec is not None and self.clock() - rec.checked < self.tag_ttl:
            local = await self._local(rec.digest)
            if local is not None:
                self.metrics.hit("manifest")
                return local
        client = self.upstreams.get(route.upstream)
        try:
            return _acceptable(await self.flight.do(("tag", key, accept.key()),
                                                    lambda: self._revalidate(client, route, tag, accept)),
                               accept)
        except UpstreamNotFound:
            raise ManifestUnknown(f"{route.repo}:{tag}") from None
        except UpstreamError as e:
            if isinstance(e, UpstreamDenied) or not (is_unavailable(e) or e.kind == "incomplete"):
                raise
            stale = await self._last_known(key, accept)
            if stale is None:
                raise
            self.metrics.stale(route.upstream)
            log.warning("stale answer for %s/%s:%s -> %s (%s)", route.upstream, route.repo, tag,
                        stale.digest, e)
            return ManifestAnswer(stale.body, stale.digest, stale.media_type, "local", stale=True)

    async def _revalidate(self, client: UpstreamClient, route: Route, tag: str,
                          accept: Accept) -> ManifestAnswer:
        key = (route.upstream, route.repo, tag)
        head = await client.head_manifest(route.repo, tag, accept.for_upstream())
        if head.digest:
            known = await self._local(head.digest)
            if known is not None:
                # Unchanged (or known from elsewhere): one HEAD and nothing else.
                if accept.accepts(known.media_type):
                    self.meta.put_tag(key, accept.key(), TagRecord(
                        known.digest, known.media_type, len(known.body), self.clock()))
                self.metrics.hit("manifest")
                return known
        self.metrics.miss("manifest")
        expected = parse_digest(head.digest) if head.digest else None
        answer = await self._fetch(client, route, head.digest or tag, accept, expected)
        if not accept.accepts(answer.media_type):
            return answer        # refused by the caller; never recorded as this client's answer
        self.meta.put_tag(key, accept.key(), TagRecord(
            answer.digest, answer.media_type, len(answer.body), self.clock()))
        return answer

    async def _last_known(self, key: tuple[str, str, str], accept: Accept) -> ManifestAnswer | None:
        records = self.meta.tags(key)
        exact = records.get(accept.key())
        candidates = [exact] if exact else []
        # Then any answer the client can take, most capable type first.
        by_type = sorted(records.values(), key=lambda r: (
            PREFERENCE.index(r.media_type) if r.media_type in PREFERENCE else len(PREFERENCE),
            -r.checked))
        candidates += [r for r in by_type if accept.accepts(r.media_type)]
        for rec in candidates:
            local = await self._local(rec.digest)
            if local is not None:
                return local
        return None

    # -- fetching and local bodies -------------------------------------------------

    async def _fetch(self, client: UpstreamClient, route: Route, ref: str, accept: Accept,
                     expected: Digest | None) -> ManifestAnswer:
        m = await client.get_manifest(route.repo, ref, accept.for_upstream(), MAX_MANIFEST_BYTES)
        algo = expected.algorithm if expected else "sha256"
        actual = digest_of(m.body, algo)
        if expected is not None and actual != expected:
            raise DigestMismatch(str(expected), str(actual), f"upstream {route.upstream}")
        if m.digest and m.digest.startswith(f"{algo}:") and m.digest != str(actual):
            raise DigestMismatch(m.digest, str(actual), f"upstream {route.upstream}")
        media_type = media_type_of(m.media_type, m.body)
        await self.store.put_bytes(actual, m.body)
        self.meta.put_manifest(ManifestRecord(str(actual), media_type, len(m.body)))
        self._remember(str(actual), m.body)
        return ManifestAnswer(m.body, str(actual), media_type, "upstream")

    async def _local(self, digest: str) -> ManifestAnswer | None:
        rec = self.meta.manifest(digest)
        if rec is None:
            return None
        d = parse_digest(digest)
        if not self.store.has(d):
            old = self._bodies.pop(digest, None)
            self._bodies_bytes -= len(old or b"")
            return None
        body = self._bodies.get(digest)
        if body is None:
            try:
                body = await self.store.read_bytes(d)
            except FileNotFoundError:
                return None
            self._remember(digest, body)
        else:
            self._bodies.move_to_end(digest)
        self.store.touch(d)
        return ManifestAnswer(body, digest, rec.media_type, "local")

    def _remember(self, digest: str, body: bytes) -> None:
        if digest in self._bodies:
            return
        self._bodies[digest] = body
        self._bodies_bytes += len(body)
        while self._bodies_bytes > self._bodies_cap and self._bodies:
            _, old = self._bodies.popitem(last=False)
            self._bodies_bytes -= len(old)
