"""The referrers API (distribution-spec 1.1): what manifests name a subject.

Asked of the upstream's referrers API; an upstream without it (a 404, as
Distribution 2.8 and several hosted registries answer) is asked through the
referrers tag schema instead (the `<alg>-<hex>` tag holding an index of them),
and is not asked the API again for NO_API_FOR. Clients see one API either way.

Answers are kept like tags: fresh for tag_ttl (no upstream traffic), then asked
again (a conditional GET where the upstream gave an ETag, a HEAD of the tag for
the tag schema); when the upstream cannot be reached the last answer is served,
marked stale, with the referrers held here added (manifests with a `subject` that
came through this route). The upstream is always asked unfiltered, so a kept
answer is whole; filters and pages are applied here.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

from edgecache.artifacts import clean_descriptors, index_of, schema_tag
from edgecache.errors import (ManifestUnknown, UpstreamBadResponse, UpstreamDenied, UpstreamError,
                              UpstreamIncomplete, UpstreamNotFound, is_unavailable)
from edgecache.jsondoc import document
from edgecache.mediatypes import OCI_INDEX, Accept
from edgecache.metrics import Metrics
from edgecache.pull.links import owner
from edgecache.pull.manifests import ManifestService
from edgecache.pull.routing import Route
from edgecache.pull.tags import next_from_link
from edgecache.reference import Digest, parse_digest
from edgecache.singleflight import SingleFlight
from edgecache.store.blobs import BlobStore
from edgecache.store.meta import MetaStore, ReferrersRecord, SubjectKey
from edgecache.upstream.client import UpstreamClient, Upstreams

log = logging.getLogger("edgecache.referrers")

MAX_REFERRERS = 1024         # descriptors kept of one answer (the rest are dropped, and logged)
MAX_UPSTREAM_PAGES = 16      # pages of one upstream answer followed
PAGE = 1000                  # descriptors per page we answer (a client's `n` may ask fewer)
NO_API_FOR = 600.0           # seconds a repository without the API is asked the tag schema only
NO_API_KEPT = 4096
ANSWERS_CACHED_BYTES = 8 * 1024 * 1024    # parsed answers kept in memory
INDEX_ACCEPT = Accept.parse([OCI_INDEX])


@dataclass(frozen=True)
class ReferrersAnswer:
    descriptors: list[dict[str, Any]]
    source: str                  # "local" or "upstream"
    stale: bool = False
    digest: str | None = None    # of the answer as kept in the store (the syncer pins it)


def page(descriptors: list[dict[str, Any]], artifact_types: Iterable[str], n: int | None,
         last: str | None) -> tuple[list[dict[str, Any]], bool, bool]:
    """(this page's descriptors, whether a filter was applied, whether more follow):
    those of the artifact types asked (any of them), after `last`, at most n."""
    types = {t for t in artifact_types if t}
    chosen = [d for d in descriptors if d.get("artifactType") in types] if types else descriptors
    if last is not None:
        at = next((i for i, d in enumerate(chosen) if d["digest"] == last), None)
        chosen = chosen[at + 1:] if at is not None else []
    size = PAGE if n is None else max(1, min(n, PAGE))
    return chosen[:size], bool(types), len(chosen) > size


class ReferrersService:
    def __init__(self, store: BlobStore, meta: MetaStore, upstreams: Upstreams,
                 manifests: ManifestService, metrics: Metrics, tag_ttl: float, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.meta = meta
        self.upstreams = upstreams
        self.manifests = manifests
        self.metrics = metrics
        self.tag_ttl = tag_ttl
        self.clock = clock
        self.flight = SingleFlight()
        # (upstream, repository) -> until when it is asked the tag schema only. Per
        # repository: a registry with the API may still 404 a repository it lacks.
        self._no_api: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._answers: OrderedDict[str, tuple[list[dict[str, Any]], int]] = OrderedDict()
        self._answers_bytes = 0

    async def get(self, route: Route, subject: Digest, *, revalidate: bool = False
                  ) -> ReferrersAnswer:
        """The referrers of a subject through a route. `revalidate`: ask the upstream
        even within tag_ttl (the syncer: signatures are often added after the image)."""
        key: SubjectKey = (route.upstream, route.repo, str(subject))
        rec = self.meta.referrers(key)
        if rec is not None and not revalidate and self.clock() - rec.checked < self.tag_ttl:
            held = await self._held(rec)
            if held is not None:
                self.metrics.hit("referrers", route.upstream)
                return ReferrersAnswer(held, "local", digest=rec.digest)
        try:
            return await self.flight.do(("referrers", key, revalidate),
                                        lambda: self._ask(route, subject, key, revalidate))
        except UpstreamError as e:
            if isinstance(e, UpstreamDenied) or not (is_unavailable(e) or isinstance(e, UpstreamIncomplete)):
                raise
            found = await self._last_known(key)
            if found is None:
                raise
            self.metrics.stale(route.upstream, f"referrers of {route.repo}@{subject}")
            log.warning("stale referrers for %s/%s@%s (%s)", route.upstream, route.repo, subject, e)
            return found

    # -- asking the upstream -----------------------------------------------------

    async def _ask(self, route: Route, subject: Digest, key: SubjectKey,
                   revalidate: bool) -> ReferrersAnswer:
        self.metrics.miss("referrers", route.upstream)
        rec = self.meta.referrers(key)
        client = self.upstreams.get(route.upstream)
        if self._no_api.get((route.upstream, route.repo), 0.0) <= self.clock():
            try:
                got = await self._from_api(client, route, subject, rec)
            except UpstreamNotFound:
                # No referrers API (the spec forbids a 404 where there is one).
                self._no_api[(route.upstream, route.repo)] = self.clock() + NO_API_FOR
                while len(self._no_api) > NO_API_KEPT:
                    self._no_api.popitem(last=False)
                log.info("%s/%s: no referrers API, asking the referrers tag schema",
                         route.upstream, route.repo)
            else:
                if got is None:                 # unchanged (304): the kept answer holds
                    if rec is None:
                        raise UpstreamBadResponse(route.upstream, 304, "not modified, unasked")
                    held = await self._held(rec)
                    if held is not None:
                        self.meta.put_referrers(key, replace(rec, checked=self.clock()))
                        return ReferrersAnswer(held, "upstream", digest=rec.digest)
                    got = await self._from_api(client, route, subject, None)
                    if got is None:
                        raise UpstreamBadResponse(route.upstream, 304, "not modified, unasked")
                descriptors, etag = got
                return await self._keep(route, key, descriptors, etag, "api")
        return await self._from_tag_schema(route, subject, key, revalidate)

    async def _from_api(self, client: UpstreamClient, route: Route, subject: Digest,
                        rec: ReferrersRecord | None
                        ) -> tuple[list[dict[str, Any]], str | None] | None:
        """Every page of the upstream's answer (bounded); None for "unchanged"."""
        etag = rec.etag if rec is not None and rec.via == "api" else None
        descriptors: list[dict[str, Any]] = []
        params: dict[str, str] = {}
        for n in range(MAX_UPSTREAM_PAGES):
            got = await client.referrers(route.repo, str(subject), params, etag if n == 0 else None)
            if got is None:
                return None
            doc = document(got.body)
            if doc is None or not isinstance(doc.get("manifests"), list):
                raise UpstreamBadResponse(route.upstream, 200, "referrers answer is not an image index")
            if len(doc["manifests"]) + len(descriptors) > MAX_REFERRERS:
                log.warning("referrers of %s/%s@%s: over %d, the rest left out", route.upstream,
                            route.repo, subject, MAX_REFERRERS)
            descriptors += clean_descriptors(doc["manifests"], MAX_REFERRERS - len(descriptors))
            following = next_from_link(got.link, r"/referrers/[^/]+$")
            if following is None or following == params or len(descriptors) >= MAX_REFERRERS:
                return _deduplicated(descriptors), got.etag if n == 0 else None
            params = following
        log.warning("referrers of %s/%s@%s: over %d pages, the rest left out", route.upstream,
                    route.repo, subject, MAX_UPSTREAM_PAGES)
        return _deduplicated(descriptors), None

    async def _from_tag_schema(self, route: Route, subject: Digest, key: SubjectKey,
                               revalidate: bool) -> ReferrersAnswer:
        # The tag is a manifest like any other: its freshness, HEAD revalidation and
        # stale answers are the manifest service's.
        try:
            ans = await self.manifests.get(route, schema_tag(subject), INDEX_ACCEPT,
                                           revalidate=revalidate)
        except ManifestUnknown:
            descriptors: list[dict[str, Any]] = []
        else:
            doc = document(ans.body)
            items = doc.get("manifests") if doc is not None else None
            descriptors = clean_descriptors(items, MAX_REFERRERS)
            if ans.stale:
                held = self.meta.held_referrers(key)
                return ReferrersAnswer(_deduplicated([*descriptors, *held]), "local", stale=True)
        return await self._keep(route, key, descriptors, None, "tags")

    async def _keep(self, route: Route, key: SubjectKey, descriptors: list[dict[str, Any]],
                    etag: str | None, via: str) -> ReferrersAnswer:
        body = index_of(descriptors)
        digest = parse_digest("sha256:" + hashlib.sha256(body).hexdigest())
        await self.store.put_bytes(digest, body, link=owner(route))
        self.meta.put_referrers(key, ReferrersRecord(str(digest), len(body), self.clock(), etag, via))
        self._remember(str(digest), descriptors, len(body))
        return ReferrersAnswer(descriptors, "upstream", digest=str(digest))

    # -- what is held here -------------------------------------------------------

    async def _last_known(self, key: SubjectKey) -> ReferrersAnswer | None:
        rec = self.meta.referrers(key)
        kept = await self._held(rec) if rec is not None else None
        held = self.meta.held_referrers(key)
        if kept is None and not held:
            return None
        return ReferrersAnswer(_deduplicated([*(kept or []), *held]), "local", stale=True,
                               digest=rec.digest if kept is not None and rec else None)

    async def _held(self, rec: ReferrersRecord) -> list[dict[str, Any]] | None:
        d = parse_digest(rec.digest)
        cached = self._answers.get(rec.digest)
        if cached is not None and self.store.has(d):
            self._answers.move_to_end(rec.digest)
            self.store.touch(d)
            return cached[0]
        if not self.store.has(d):
            return None
        try:
            body = await self.store.read_bytes(d)
        except FileNotFoundError:
            return None
        doc = document(body)
        if doc is None:
            return None
        descriptors = clean_descriptors(doc.get("manifests"), MAX_REFERRERS)
        self.store.touch(d)
        self._remember(rec.digest, descriptors, len(body))
        return descriptors

    def _remember(self, digest: str, descriptors: list[dict[str, Any]], size: int) -> None:
        if digest in self._answers:
            return
        self._answers[digest] = (descriptors, size)
        self._answers_bytes += size
        while self._answers_bytes > ANSWERS_CACHED_BYTES and len(self._answers) > 1:
            _, (_, old_size) = self._answers.popitem(last=False)
            self._answers_bytes -= old_size


def _deduplicated(descriptors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for d in descriptors:
        if d["digest"] not in seen:
            seen.add(d["digest"])
            out.append(d)
    return out
