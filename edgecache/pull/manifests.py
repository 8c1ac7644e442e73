"""Manifests and tags.

By digest: the store answers when it holds the manifest; otherwise one GET
upstream, verified against the digest. By tag: an answer is fresh for tag_ttl
(no upstream traffic at all); after that the upstream is asked with HEAD only,
and a GET follows only when the digest is one we do not hold. When the upstream
fails (unreachable, timeout, 429, 5xx) the last known answer is served, marked
stale. Tag answers are kept per Accept list, so a client never gets a manifest
of a type it did not accept, nor a platform manifest where it asked for an index.

With siblings: a manifest by digest we do not hold is asked of them before the
upstream; a tag is only ever resolved by the upstream, except when it cannot be
reached: then the freshest last known answer of this node and its siblings is
served, marked stale. Requests from siblings (`hop`) go nowhere but upstream.

Longer than most modules on purpose: the order of the lookup (pinned tag, fresh
record, siblings, upstream, last known) reads top to bottom in one place.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

from edgecache.artifacts import descriptor
from edgecache.errors import (DigestMismatch, InvalidName, ManifestUnknown, UpstreamError,
                              UpstreamIncomplete, UpstreamNotFound, UpstreamDenied, is_unavailable)
from edgecache.jsondoc import document
from edgecache.mediatypes import DOCKER_SCHEMA1, OCI_INDEX, OCI_MANIFEST, PREFERENCE, Accept
from edgecache.metrics import Metrics
from edgecache.pull.links import Confirmer, children, owner
from edgecache.pull.routing import Route
from edgecache.singleflight import SingleFlight
from edgecache.reference import Digest, digest_of, is_digest, parse_digest, validate_tag
from edgecache.store.blobs import BlobStore
from edgecache.store.meta import ManifestRecord, MetaStore, TagRecord
from edgecache.upstream.client import UpstreamClient, Upstreams

log = logging.getLogger("edgecache.manifests")

MAX_LINKED_TREE = 256        # manifests linked at once under one (an index and its platforms)


@dataclass(frozen=True)
class ManifestAnswer:
    body: bytes
    digest: str
    media_type: str
    source: str               # "local", "sibling" or "upstream"
    stale: bool = False


def media_type_of(body: bytes) -> str:
    """A manifest's media type, from its (verified) body alone: its mediaType field,
    else its shape. Never an upstream's or sibling's Content-Type: one source must
    not be able to make a digest another route shares unpullable."""
    doc = document(body)
    if doc is None:
        return OCI_MANIFEST
    mt = doc.get("mediaType")
    if isinstance(mt, str) and mt:
        return mt
    if "fsLayers" in doc:
        return DOCKER_SCHEMA1
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


def _tag(reference: str) -> str:
    """A tag, or MANIFEST_UNKNOWN as Distribution answers for a malformed one (the
    conformance suite asks for `.INVALID_MANIFEST_NAME` as a manifest that is not there)."""
    try:
        return validate_tag(reference)
    except InvalidName:
        raise ManifestUnknown(f"no manifest {reference[:200]!r}: not a valid tag") from None


def _acceptable(answer: ManifestAnswer, accept: Accept) -> ManifestAnswer:
    """Like Distribution: a manifest of a type the client did not accept is "unknown" to it."""
    if not accept.accepts(answer.media_type):
        raise ManifestUnknown(f"{answer.media_type} found, but the client's Accept does not include it")
    return answer


class ManifestSiblings(Protocol):
    """What manifests ask of the siblings (edgecache.siblings.service.Siblings)."""

    @property
    def trusted(self) -> bool: ...
    def live(self) -> list[Any]: ...
    async def manifest(self, route: Route, digest: Digest, cap: int) -> bytes | None: ...
    async def last_known_tag(self, route: Route, tag: str, accept: list[str],
                             cap: int) -> tuple[Any, Any] | None: ...
    def wrong_bytes(self, peer: Any, detail: str) -> None: ...


class ManifestService:
    """`pinned_tags`: (upstream, repository, tag) -> digest, for pinned tracked tags:
    they answer from the syncer, which switches them only once the new image is
    complete (not by tag_ttl). `siblings`: asked before the upstream, if any."""

    def __init__(self, store: BlobStore, meta: MetaStore, upstreams: Upstreams, metrics: Metrics,
                 tag_ttl: float, *, clock: Callable[[], float] = time.time,
                 body_cache_bytes: int = 32 * 1024 * 1024,
                 confirmer: Confirmer | None = None,
                 max_manifest_bytes: int = 4 * 1024 * 1024,
                 pinned_tags: Mapping[tuple[str, str, str], str] | None = None,
                 siblings: ManifestSiblings | None = None) -> None:
        # Told of every pinned tag answered (the syncer's pinned_tag_served): it asks
        # the upstream, now and then, whether the tag moved.
        self.on_pinned_tag: Callable[[tuple[str, str, str]], None] | None = None
        self.store = store
        self.max_bytes = max_manifest_bytes      # limits.manifest_bytes
        self.confirmer = confirmer or Confirmer(upstreams)
        self.meta = meta
        self.upstreams = upstreams
        self.metrics = metrics
        self.tag_ttl = tag_ttl
        self.clock = clock
        self.flight = SingleFlight()
        # Manifests read lately, as the answers they make (digest -> local answer), LRU,
        # bounded by their bytes (_answer_size): the hot path awaits nothing and reads nothing.
        self._answers: OrderedDict[str, ManifestAnswer] = OrderedDict()
        self._answers_bytes = 0
        self._answers_cap = body_cache_bytes
        self.pinned_tags: Mapping[tuple[str, str, str], str] = {} if pinned_tags is None else pinned_tags
        self.siblings = siblings

    async def get(self, route: Route, reference: str, accept: Accept, *,
                  hop: bool = False, revalidate: bool = False) -> ManifestAnswer:
        """`revalidate`: a tag is asked of the upstream even within tag_ttl (the
        syncer, for tags that change beside an image: cosign's, the tag schema's)."""
        if is_digest(reference):
            if reference not in self._answers:  # (its keys are digests, as str(Digest) spells them)
                parse_digest(reference)         # valid: then it is the digest's own spelling
            return await self._by_digest(route, reference, accept, hop)
        return await self._by_tag(route, _tag(reference), accept, hop, revalidate)

    def held(self, route: Route, reference: str, accept: Accept) -> ManifestAnswer | None:
        """A client's answer from memory alone, when there is one: a manifest in the
        answer cache that belongs to the route (by digest), or that a pinned tag or a
        fresh tag record names. Nothing awaited, nothing parsed: the hot path. None:
        get() answers (and decides everything this does not: reads, the upstream,
        errors). Names that are not valid digests or tags are never keys here."""
        if is_digest(reference):
            local = self._cached(reference)
            if local is None or not accept.accepts(local.media_type) \
                    or not self.store.linked(reference, owner(route)):
                return None
        else:
            key = (route.upstream, route.repo, reference)
            pinned = self.pinned_tags.get(key)
            if pinned is not None:
                local = self._cached(pinned)
                if local is None or not accept.accepts(local.media_type):
                    return None
                if self.on_pinned_tag is not None:
                    self.on_pinned_tag(key)
            else:
                rec = self.meta.tags(key).get(accept.key())
                if rec is None or self.clock() - rec.checked >= self.tag_ttl:
                    return None
                local = self._cached(rec.digest)
                if local is None:
                    return None
        self.metrics.hit("manifest", route.upstream)
        return local

    async def local(self, route: Route, digest: str) -> ManifestAnswer | None:
        """A manifest this node holds for a route (a sibling's probe)."""
        if not self.store.linked(digest, owner(route)):
            return None
        return await self._local(digest)

    async def last_known(self, route: Route, tag: str,
                         accept: Accept) -> tuple[ManifestAnswer, float]:
        """This node's last known answer for a tag and when it was confirmed (for a
        sibling whose upstream is unreachable); never asks anyone."""
        found = await self._last_known((route.upstream, route.repo, _tag(tag)), accept)
        if found is None:
            raise ManifestUnknown(f"{route.repo}:{tag} is not known here")
        return found

    # -- by digest -------------------------------------------------------------

    async def _by_digest(self, route: Route, digest: str, accept: Accept,
                         hop: bool = False) -> ManifestAnswer:
        local = self._cached(digest) or await self._local(digest)
        if local is not None and not self.store.linked(digest, owner(route)):
            # Held, but not known to belong to this repository: its upstream says with a
            # HEAD where a lie gives nothing away; elsewhere only its own bytes will do.
            if not self.confirmer.may_vouch(route, self.store.links.owners(digest)):
                local = None
            elif await self.confirmer.confirm(route, "manifests", digest):
                await self._link(route, digest, local.body, vouched=True)
            else:
                raise ManifestUnknown(f"{route.repo}@{digest}")
        if local is not None:
            if not accept.accepts(local.media_type):
                raise ManifestUnknown(f"{digest} is a {local.media_type}, which the client did not accept")
            self.metrics.hit("manifest", route.upstream)
            return local
        d = parse_digest(digest)
        self.metrics.miss("manifest", route.upstream)
        client = self.upstreams.get(route.upstream)
        try:
            # Keyed by route and Accept too: the upstream and the Accept list decide
            # what answer comes back (Distribution refuses an index to a client that
            # does not accept indexes).
            answer = await self.flight.do(("digest", route, str(d), accept.key(), hop),
                                          lambda: self._fetch_digest(client, route, d, accept, hop))
        except UpstreamNotFound:
            raise ManifestUnknown(f"{route.repo}@{d}") from None
        return _acceptable(answer, accept)

    # -- by tag ----------------------------------------------------------------

    async def _fetch_digest(self, client: UpstreamClient, route: Route, d: Digest,
                            accept: Accept, hop: bool) -> ManifestAnswer:
        siblings = None if hop else self.siblings
        # A sibling that does not sign may be anyone: what it says belongs to the route
        # is confirmed with the upstream first (a HEAD; the body still saves the GET).
        if siblings is not None and siblings.live() and (
                siblings.trusted or await self.confirmer.confirm(route, "manifests", str(d))):
            body = await siblings.manifest(route, d, self.max_bytes)    # verified there
            if body is not None:
                media_type = media_type_of(body)
                await self._keep(route, d, media_type, body)
                return ManifestAnswer(body, str(d), media_type, "sibling")
        # One upstream fetch for this node's clients and its siblings' requests alike.
        return await self.flight.do(("digest-upstream", route, str(d), accept.key()),
                                    lambda: self._fetch(client, route, str(d), accept, d))

    async def _by_tag(self, route: Route, tag: str, accept: Accept,
                      hop: bool = False, revalidate: bool = False) -> ManifestAnswer:
        key = (route.upstream, route.repo, tag)
        pinned = None if revalidate else self.pinned_tags.get(key)
        if pinned is not None:
            local = await self._local(pinned)
            if local is not None and accept.accepts(local.media_type):
                self.metrics.hit("manifest", route.upstream)
                if self.on_pinned_tag is not None and not hop:
                    self.on_pinned_tag(key)
                return local
        rec = None if revalidate else self.meta.tags(key).get(accept.key())
        if rec is not None and self.clock() - rec.checked < self.tag_ttl:
            local = await self._local(rec.digest)
            if local is not None:
                self.metrics.hit("manifest", route.upstream)
                return local
        client = self.upstreams.get(route.upstream)
        try:
            return _acceptable(await self.flight.do(("tag", key, accept.key()),
                                                    lambda: self._revalidate(client, route, tag, accept)),
                               accept)
        except UpstreamNotFound:
            raise ManifestUnknown(f"{route.repo}:{tag}") from None
        except UpstreamError as e:
            if isinstance(e, UpstreamDenied) or not (is_unavailable(e) or isinstance(e, UpstreamIncomplete)):
                raise
            found = await self._last_known(key, accept)
            if not hop and self.siblings is not None and self.siblings.live():
                theirs = await self._siblings_last_known(route, tag, accept)
                if theirs is not None and (found is None or theirs[1] > found[1]):
                    found = theirs
            if found is None:
                raise
            stale = found[0]
            self.metrics.stale(route.upstream, f"{route.repo}:{tag}")
            log.warning("stale answer for %s/%s:%s -> %s (%s)", route.upstream, route.repo, tag,
                        stale.digest, e)
            return ManifestAnswer(stale.body, stale.digest, stale.media_type, stale.source, stale=True)

    async def _revalidate(self, client: UpstreamClient, route: Route, tag: str,
                          accept: Accept) -> ManifestAnswer:
        key = (route.upstream, route.repo, tag)
        head = await client.head_manifest(route.repo, tag, accept.for_upstream())
        if head.digest:
            known = await self._local(head.digest)
            if known is not None and not self.store.linked(known.digest, owner(route)) and \
                    not self.confirmer.may_vouch(route, self.store.links.owners(known.digest)):
                known = None     # the tag names content held only under private upstreams
            if known is not None:
                # Unchanged (or known from elsewhere): one HEAD and nothing else. The
                # upstream just said the tag names it: it belongs to this repository.
                await self._link(route, known.digest, known.body, vouched=True)
                if accept.accepts(known.media_type):
                    self.meta.put_tag(key, accept.key(), TagRecord(
                        known.digest, known.media_type, len(known.body), self.clock()))
                self.metrics.hit("manifest", route.upstream)
                return known
        self.metrics.miss("manifest", route.upstream)
        expected = parse_digest(head.digest) if head.digest else None
        answer = await self._fetch(client, route, head.digest or tag, accept, expected)
        if not accept.accepts(answer.media_type):
            return answer        # refused by the caller; never recorded as this client's answer
        self.meta.put_tag(key, accept.key(), TagRecord(
            answer.digest, answer.media_type, len(answer.body), self.clock()))
        return answer

    async def _siblings_last_known(self, route: Route, tag: str,
                                   accept: Accept) -> tuple[ManifestAnswer, float] | None:
        """The freshest sibling answer for a tag, verified, kept, and recorded as of when
        the sibling confirmed it (so the next request still tries the upstream first)."""
        got = await self.siblings.last_known_tag(route, tag, accept.for_upstream(),
                                                 self.max_bytes)
        if got is None:
            return None
        ans, peer = got
        try:
            expected = parse_digest(ans.digest)
        except ValueError:
            expected = None
        actual = digest_of(ans.body, expected.algorithm if expected else "sha256")
        if expected is None or actual != expected:
            self.siblings.wrong_bytes(peer, f"tag answer {ans.digest} has a body of {actual}")
            return None
        media_type = media_type_of(ans.body)
        if not accept.accepts(media_type):
            return None
        await self._keep(route, actual, media_type, ans.body)
        # A sibling's clock ahead of ours does not make its answer newer than now, and
        # the record is kept already expired: it is a fallback, never a fresh answer,
        # so the next request asks the upstream first.
        now = self.clock()
        checked = min(ans.checked, now)
        recorded = min(checked, now - self.tag_ttl - 1)
        key = (route.upstream, route.repo, tag)
        if recorded > (self.meta.tags(key).get(accept.key()) or TagRecord("", "", 0, 0)).checked:
            self.meta.put_tag(key, accept.key(), TagRecord(str(actual), media_type, len(ans.body),
                                                           recorded))
        log.warning("%s/%s:%s -> %s from sibling %s (the upstream is unreachable)",
                    route.upstream, route.repo, tag, actual, peer.node_id)
        return ManifestAnswer(ans.body, str(actual), media_type, "sibling"), checked

    async def _last_known(self, key: tuple[str, str, str],
                          accept: Accept) -> tuple[ManifestAnswer, float] | None:
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
                return local, rec.checked
        return None

    # -- fetching and local bodies -------------------------------------------------

    async def _fetch(self, client: UpstreamClient, route: Route, ref: str, accept: Accept,
                     expected: Digest | None) -> ManifestAnswer:
        m = await client.get_manifest(route.repo, ref, accept.for_upstream(), self.max_bytes)
        algo = expected.algorithm if expected else "sha256"
        actual = digest_of(m.body, algo)
        if expected is not None and actual != expected:
            raise DigestMismatch(str(expected), str(actual), f"upstream {route.upstream}")
        if m.digest and m.digest.startswith(f"{algo}:") and m.digest != str(actual):
            raise DigestMismatch(m.digest, str(actual), f"upstream {route.upstream}")
        media_type = media_type_of(m.body)
        await self._keep(route, actual, media_type, m.body)
        return ManifestAnswer(m.body, str(actual), media_type, "upstream")

    async def _keep(self, route: Route, digest: Digest, media_type: str, body: bytes) -> None:
        """A verified manifest that came for a route into the store, its record, its
        links and the body cache."""
        await self.store.put_bytes(digest, body, link=owner(route))   # committed with its link
        self.meta.put_manifest(ManifestRecord(str(digest), media_type, len(body)))
        referrer = descriptor(body, str(digest), media_type)
        if referrer is not None:       # answered offline by the referrers API (pull/referrers.py)
            self.meta.put_held_referrer((route.upstream, route.repo, referrer["subject"]),
                                        referrer["descriptor"])
        self._remember(str(digest), body, media_type)
        await self._link(route, str(digest), body, new=True)          # and what it names

    async def _link(self, route: Route, digest: str, body: bytes, *, new: bool = False,
                    vouched: bool = False) -> None:
        """Link a manifest to a route, with what it names (recursively) that is held
        here and already belongs to the same upstream. Content held only under other
        upstreams is not linked by naming: anyone can write a manifest naming any
        digest, so across upstreams only the upstream's own answer (a fill, a HEAD)
        links it. Once per (route, manifest): a manifest already linked was walked
        (`new`: just stored with its link, not walked yet). `vouched`: on the
        upstream's word alone (store/links.py)."""
        own = owner(route)
        if not new and self.store.linked(digest, own):
            return
        todo, seen, found = [(digest, body)], set(), []
        while todo and len(seen) < MAX_LINKED_TREE:
            d, b = todo.pop()
            if d in seen:
                continue
            seen.add(d)
            found.append(d)
            # Parsing an index of a few MiB takes milliseconds: not on the loop.
            named = children(b) if len(b) < 64 * 1024 else await asyncio.to_thread(children, b)
            for child in named:
                if child in seen or self.store.linked(child, own) or not any(
                        u == route.upstream for u, _ in self.store.links.owners(child)):
                    continue
                if self.meta.manifest(child) is not None:
                    got = await self._local(child)
                    if got is not None:
                        todo.append((child, got.body))
                        continue
                seen.add(child)
                found.append(child)
        await self.store.link(found, own, vouched=vouched)       # one write for the whole tree

    def _cached(self, digest: str) -> ManifestAnswer | None:
        """A local answer from the answer cache, while the store holds the manifest;
        nothing awaited (the hot path)."""
        ans = self._answers.get(digest)
        if ans is None:
            return None
        rec = self.meta.manifest(digest)
        if rec is None or rec.media_type != ans.media_type or not self.store.has(digest):
            self._forget(digest)
            return None
        self._answers.move_to_end(digest)
        self.store.touch(digest)
        return ans

    async def _local(self, digest: str) -> ManifestAnswer | None:
        ans = self._cached(digest)
        if ans is not None:
            return ans
        rec = self.meta.manifest(digest)
        if rec is None:
            return None
        d = parse_digest(digest)
        if not self.store.has(d):
            return None
        try:
            body = await self.store.read_bytes(d)
        except FileNotFoundError:
            return None
        self.store.touch(d)
        return self._remember(digest, body, rec.media_type)

    def _remember(self, digest: str, body: bytes, media_type: str) -> ManifestAnswer:
        ans = self._answers.get(digest)
        if ans is not None and ans.media_type == media_type:
            return ans
        self._forget(digest)
        ans = self._answers[digest] = ManifestAnswer(body, digest, media_type, "local")
        self._answers_bytes += _answer_size(ans)
        while self._answers_bytes > self._answers_cap and self._answers:
            _, old = self._answers.popitem(last=False)
            self._answers_bytes -= _answer_size(old)
        return ans

    def _forget(self, digest: str) -> None:
        old = self._answers.pop(digest, None)
        if old is not None:
            self._answers_bytes -= _answer_size(old)


ANSWER_OVERHEAD = 512   # bytes an answer holds beside its body: its object, key, digest, type


def _answer_size(ans: ManifestAnswer) -> int:
    """What an answer costs the cache's budget: tiny manifests are not free."""
    return len(ans.body) + len(ans.media_type) + ANSWER_OVERHEAD   # (the type: the manifest's own)
