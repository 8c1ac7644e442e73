"""Blobs: from the store when present, else from the one fill for that digest."""
from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from edgecache.errors import (BlobUnknown, DigestMismatch, FillAbandoned, HopRefused,
                              SizeMismatch, StoreFull, UpstreamError, UpstreamIncomplete,
                              UpstreamNotFound)
from edgecache.metrics import Metrics
from edgecache.pull.fill import Fill, Source, SourceFactory, SourceKind
from edgecache.pull.fills import FillRegistry
from edgecache.pull.links import Confirmer, owner
from edgecache.pull.routing import Route
from edgecache.reference import Digest
from edgecache.store.blobs import BlobStore
from edgecache.upstream.client import Upstreams

# How long a sibling's request waits to learn where a fill already under way gets
# its bytes (a fill first asks the siblings, for at most a second).
SOURCE_WAIT = 3.0


@dataclass(frozen=True)
class LocalBlob:
    digest: Digest
    path: Path
    size: int


def failure_reason(err: BaseException) -> str:
    if isinstance(err, DigestMismatch):
        return "digest_mismatch"
    if isinstance(err, SizeMismatch):
        return "size_mismatch"
    if isinstance(err, StoreFull):
        return "disk_full"
    if isinstance(err, FillAbandoned):
        return "abandoned"
    if isinstance(err, UpstreamError):
        return err.kind
    return type(err).__name__.lower()


class BlobSiblings(Protocol):
    """What blobs ask of the siblings (edgecache.siblings.service.Siblings)."""

    @property
    def trusted(self) -> bool: ...
    def live(self) -> list[Any]: ...
    def blob_source(self, route: Route, digest: Digest, upstream: SourceFactory,
                    announce: Callable[[SourceKind], None]
                    ) -> AbstractAsyncContextManager[Source]: ...


class BlobService:
    """`hop=True` marks a request from a sibling: it is answered from the store, a
    fill from the upstream, or the upstream, and never passed on to a sibling.

    A blob is answered through a route only when it belongs to it (pull/links.py):
    linked, being filled through that route, confirmed by the route's upstream, or
    fetched from that upstream again."""

    def __init__(self, store: BlobStore, fills: FillRegistry, upstreams: Upstreams,
                 metrics: Metrics, confirmer: Confirmer | None = None,
                 siblings: BlobSiblings | None = None) -> None:
        self.store = store
        self.fills = fills
        self.upstreams = upstreams
        self.metrics = metrics
        self.confirmer = confirmer or Confirmer(upstreams)
        self.siblings = siblings
        fills.on_finish = self._fill_finished

    def local(self, route: Route, digest: Digest) -> LocalBlob | None:
        """The blob, if held here and linked to the route (no I/O: memory only)."""
        size = self.store.size(digest)
        if size is None or not self.store.linked(digest, owner(route)):
            return None
        self.store.touch(digest)
        return LocalBlob(digest, self.store.path(digest), size)

    async def _vouched(self, route: Route, digest: Digest, owners: frozenset) -> bool:
        """Whether the route's upstream vouches that its repository has this digest,
        which is held or under way here for `owners`: True after a yes to a HEAD; False
        where a HEAD would be a mere claim (pull/links.py): only the upstream's own
        bytes will do; BlobUnknown when it says no (or cannot be asked)."""
        if not self.confirmer.may_vouch(route, owners):
            return False
        if not await self.confirmer.confirm(route, "blobs", str(digest)):
            raise BlobUnknown(str(digest))
        return True

    async def _linked_or_own_bytes(self, route: Route, digest: Digest) -> bool:
        """For a digest held here but not linked to the route: link it if the route's
        upstream vouches (a HEAD) or proves it has the content (two windows of it: see
        pull/links.py); True when it could not be asked now, and only its own bytes
        will do; BlobUnknown when it says no."""
        if not self.store.has(digest) or self.store.linked(digest, owner(route)):
            return False
        if not await self._vouched(route, digest, self.store.links.owners(str(digest))):
            size = self.store.size(digest)
            if size is None:
                return False                    # evicted meanwhile: a miss like any other
            answer = await self.confirmer.prove(
                route, str(digest), size, lambda at, n: self.store.read_range(digest, at, n))
            if answer == "no":
                raise BlobUnknown(str(digest))
            if answer == "unanswered":
                return True
        await self.store.link([digest], owner(route), vouched=True)
        return False

    async def head(self, route: Route, digest: Digest) -> int | None:
        """The size of a blob, asking the upstream (HEAD only) when we do not hold it."""
        await self._linked_or_own_bytes(route, digest)
        if (b := self.local(route, digest)) is not None:
            self.metrics.hit("blob", route.upstream)
            return b.size
        fill = self.fills.get(digest)
        try:
            # Not a fill from a sibling: its size is not known for sure before the end.
            if fill is not None and fill.origin == route and fill.source_kind is SourceKind.UPSTREAM:
                return await fill.wait_headers()
            return await self.upstreams.get(route.upstream).head_blob(route.repo, str(digest))
        except UpstreamNotFound:
            raise BlobUnknown(str(digest)) from None

    def held(self, route: Route, digest: Digest) -> tuple[str, int | None] | None:
        """How this node holds a blob for a route, for a sibling's probe: ("stored",
        size), or ("filling", size) while it comes from the upstream for that route;
        None otherwise."""
        size = self.store.size(digest)
        if size is not None and self.store.linked(digest, owner(route)):
            return "stored", size
        fill = self.fills.get(digest)
        if (fill is not None and fill.source_kind is SourceKind.UPSTREAM and fill.error is None
                and fill.origin == route):
            return "filling", fill.size
        return None

    def _start(self, route: Route, digest: Digest, *, siblings: bool, shared: bool = True) -> Fill:
        """The fill of this digest through this route (joining one under way unless
        `shared` is False: then only the upstream's own bytes, for this request)."""
        client = self.upstreams.get(route.upstream)

        def upstream(offset: int = 0):
            return client.blob(route.repo, str(digest), offset)

        if siblings and self.siblings is not None:
            sibs = self.siblings
            fill: Fill | None = None

            def announce(kind: SourceKind) -> None:
                assert fill is not None
                fill.announce(kind)

            fill = self.fills.start(
                digest, lambda: sibs.blob_source(route, digest, upstream, announce),
                expected_size=None, source_name=f"upstream {route.upstream}", origin=route,
                fallback=upstream, link=owner(route))
            return fill
        return self.fills.start(digest, upstream, expected_size=None,
                                source_name=f"upstream {route.upstream}", origin=route,
                                kind=SourceKind.UPSTREAM, link=owner(route), shared=shared)

    async def _target(self, route: Route, digest: Digest, *,
                      hop: bool) -> tuple[LocalBlob | Fill, bool]:
        """What answers this request: the blob held for this route, or a fill through
        it (ours, or one under way that the route may have); and whether it is a hit.

        Whether the route may have what is held or under way here is decided right
        before it is handed out, with no await after the decision: while this request
        waited, another route may have started a fill of this digest (a private one)
        that it must not join, or the blob may have landed under another route."""
        own_bytes = await self._linked_or_own_bytes(route, digest)
        if not own_bytes and (b := self.local(route, digest)) is not None:
            return b, True
        if hop:
            await self._joinable_by_hop(digest)
        for _ in range(4):       # each await below may change what is here; then again
            if own_bytes:
                break
            if (b := self.local(route, digest)) is not None:
                return b, False                        # it landed while we waited
            if self.store.has(digest):
                own_bytes = await self._linked_or_own_bytes(route, digest)
                continue                               # landed under another route
            fill = self.fills.get(digest)
            if fill is not None and fill.error is None and fill.origin == route:
                return self._start(route, digest, siblings=False), False   # joins it
            if fill is not None and fill.error is None:
                # Another route's fill: joined only if this route's upstream vouches.
                # The yes links this route to what *that* fill brings, once its bytes
                # verify (then its upstream had them), never to the digest as such.
                if not await self._vouched(route, digest,
                                           frozenset({fill.link} if fill.link else ())):
                    own_bytes = True
                elif self.fills.get(digest) is fill and not self.store.has(digest):
                    fill.joined_by.add(owner(route))
                    return self._start(route, digest, siblings=False), False   # joins it
                continue
            siblings = await self._siblings_for(route, digest, hop)
            if self.store.has(digest) or self.fills.get(digest) not in (None, fill):
                continue                               # changed while we asked
            return self._start(route, digest, siblings=siblings), False
        if not own_bytes and (b := self.local(route, digest)) is not None:
            return b, False
        # Only this upstream's own bytes (shared by requests through this same route).
        return self._start(route, digest, siblings=False, shared=False), False

    async def _joinable_by_hop(self, digest: Digest) -> None:
        """A sibling may join our fill only if it comes from the upstream: joining one
        that comes from a sibling would make a chain of hops, or a loop."""
        fill = self.fills.get(digest)
        if fill is None:
            return
        try:
            async with asyncio.timeout(SOURCE_WAIT):
                await fill.source_known.wait()
        except TimeoutError:
            pass
        if not fill.source_known.is_set() or fill.source_kind is SourceKind.SIBLING:
            raise HopRefused(f"{digest} is on its way here from a sibling")

    async def get(self, route: Route, digest: Digest, *, hop: bool = False) -> LocalBlob | Fill:
        existing = self.fills.get(digest)
        target, hit = await self._target(route, digest, hop=hop)
        (self.metrics.hit if hit else self.metrics.miss)("blob", route.upstream)
        if isinstance(target, LocalBlob):
            return target
        fill = target
        if fill is existing:
            self.metrics.coalesced()
        try:
            await fill.wait_headers()
        except FillAbandoned:
            # Cancelled for want of readers just as this request joined: a fill of its own.
            target, _ = await self._target(route, digest, hop=hop)
            if isinstance(target, LocalBlob):
                return target
            fill = target
            await fill.wait_headers()
        except UpstreamError as e:
            if fill.origin == route:
                if isinstance(e, UpstreamNotFound):
                    raise BlobUnknown(str(digest)) from None
                raise
            # The fill we joined came from another repository or upstream, and that one
            # failed: ours may well have the blob. Try it ourselves, once.
            target, _ = await self._target(route, digest, hop=hop)
            if isinstance(target, LocalBlob):
                return target
            fill = target
            try:
                await fill.wait_headers()
            except UpstreamNotFound:
                raise BlobUnknown(str(digest)) from None
        return fill

    async def _siblings_for(self, route: Route, digest: Digest, hop: bool) -> bool:
        """Whether a new fill may ask the siblings. Ones whose claims are not vouched for
        (no shared secret, no operator's CA) may be anyone on the LAN: that the route has
        the digest is confirmed with the upstream first, else they are not asked."""
        siblings = None if hop else self.siblings
        if siblings is None or not siblings.live():
            return False
        if siblings.trusted:
            return True
        # Not held here (else it was decided above): the upstream's yes lets the bytes come
        # from a sibling (checked against the digest). It links nothing by itself: a
        # yes for a digest not held is only a claim (pull/links.py).
        return await self.confirmer.confirm(route, "blobs", str(digest))

    async def ensure(self, route: Route, digest: Digest, on_fill=None) -> int:
        """Have the blob in the store for this route (fetching it if need be); returns
        its size.

        on_fill(fill) is told of the fill, for progress; clients asking for the same
        digest meanwhile share it.
        """
        target, _ = await self._target(route, digest, hop=False)
        if isinstance(target, LocalBlob):
            return target.size
        fill = target
        fill.keep = True                 # sync work: finished even if every client leaves
        if on_fill is not None:
            on_fill(fill)
        assert fill.task is not None
        await asyncio.shield(fill.task)
        if fill.error is not None:
            if isinstance(fill.error, UpstreamNotFound):
                raise BlobUnknown(str(digest)) from None
            raise fill.error
        if not fill.stored:
            raise fill.commit_error or BlobUnknown(str(digest))
        return fill.size or 0

    def _fill_finished(self, fill: Fill) -> None:
        if fill.error is not None or fill.commit_error is not None:
            self.metrics.fill_failed(failure_reason(fill.error or fill.commit_error),
                                     f"{fill.digest}: {fill.error or fill.commit_error}")
            if isinstance(fill.error, UpstreamIncomplete):
                # Mid-body failures never reach the client's error hook: count them here.
                self.metrics.upstream_error(fill.error.upstream, fill.error.kind)
        elif fill.source_kind is SourceKind.UPSTREAM:
            self.metrics.fetched(fill.source_name.removeprefix("upstream "),
                                 fill.written - fill.resumed_at)
