"""Blobs: from the store when present, else from the one fill for that digest."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from edgecache.errors import (BlobUnknown, DigestMismatch, HopRefused, SizeMismatch, StoreFull,
                              UpstreamError, UpstreamNotFound)
from edgecache.metrics import Metrics
from edgecache.pull.fill import Fill, FillRegistry
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
    if isinstance(err, UpstreamError):
        return err.kind
    return type(err).__name__.lower()


class BlobService:
    """`hop=True` marks a request from a sibling: it is answered from the store, a
    fill from the upstream, or the upstream, and never passed on to a sibling."""

    def __init__(self, store: BlobStore, fills: FillRegistry, upstreams: Upstreams,
                 metrics: Metrics) -> None:
        self.store = store
        self.fills = fills
        self.upstreams = upstreams
        self.metrics = metrics
        self.siblings = None           # edgecache.siblings.service.Siblings, set by the runtime
        fills.on_finish = self._fill_finished

    def local(self, digest: Digest) -> LocalBlob | None:
        size = self.store.size(digest)
        if size is None:
            return None
        self.store.touch(digest)
        return LocalBlob(digest, self.store.path(digest), size)

    async def head(self, route: Route, digest: Digest) -> int | None:
        """The size of a blob, asking the upstream (HEAD only) when we do not hold it."""
        if (b := self.local(digest)) is not None:
            self.metrics.hit("blob")
            return b.size
        fill = self.fills.get(digest)
        try:
            # Not a fill from a sibling: its size is not known for sure before the end.
            if fill is not None and fill.origin == route and fill.source_kind == "upstream":
                return await fill.wait_headers()
            return await self.upstreams.get(route.upstream).head_blob(route.repo, str(digest))
        except UpstreamNotFound:
            raise BlobUnknown(str(digest)) from None

    def held(self, digest: Digest) -> tuple[str, int | None] | None:
        """How this node holds a blob, for a sibling's probe: ("stored", size), or
        ("filling", size) while it comes from the upstream; None otherwise."""
        size = self.store.size(digest)
        if size is not None:
            return "stored", size
        fill = self.fills.get(digest)
        if fill is not None and fill.source_kind == "upstream" and fill.error is None:
            return "filling", fill.size
        return None

    def _start(self, route: Route, digest: Digest, *, hop: bool = False) -> Fill:
        client = self.upstreams.get(route.upstream)

        def upstream(offset: int = 0):
            return client.blob(route.repo, str(digest), offset)

        siblings = None if hop else self.siblings
        if siblings is not None and siblings.live():
            fill: Fill | None = None

            def announce(kind: str) -> None:
                assert fill is not None
                fill.announce(kind)

            fill = self.fills.start(
                digest, lambda: siblings.blob_source(route, digest, upstream, announce),
                expected_size=None, source_name=f"upstream {route.upstream}", origin=route,
                fallback=upstream)
            return fill
        return self.fills.start(digest, upstream, expected_size=None,
                                source_name=f"upstream {route.upstream}", origin=route,
                                kind="upstream")

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
        if not fill.source_known.is_set() or fill.source_kind == "sibling":
            raise HopRefused(f"{digest} is on its way here from a sibling")

    async def get(self, route: Route, digest: Digest, *, hop: bool = False) -> LocalBlob | Fill:
        if (b := self.local(digest)) is not None:
            self.metrics.hit("blob")
            return b
        self.metrics.miss("blob")
        if hop:
            await self._joinable_by_hop(digest)
        joined = self.fills.get(digest) is not None
        fill = self._start(route, digest, hop=hop)
        if joined:
            self.metrics.coalesced()
        try:
            await fill.wait_headers()
        except UpstreamError as e:
            if fill.origin == route:
                if isinstance(e, UpstreamNotFound):
                    raise BlobUnknown(str(digest)) from None
                raise
            # The fill we joined came from another repository or upstream, and that one
            # failed: ours may well have the blob. Try it ourselves, once.
            fill = self._start(route, digest, hop=hop)
            try:
                await fill.wait_headers()
            except UpstreamNotFound:
                raise BlobUnknown(str(digest)) from None
        return fill

    async def ensure(self, route: Route, digest: Digest, on_fill=None) -> int:
        """Have the blob in the store (fetching it if need be); returns its size.

        on_fill(fill) is told of the fill, for progress; clients asking for the same
        digest meanwhile share it.
        """
        if (size := self.store.size(digest)) is not None:
            return size
        fill = self._start(route, digest)
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
            self.metrics.fill_failed(failure_reason(fill.error or fill.commit_error))
            if isinstance(fill.error, UpstreamError) and fill.error.kind == "incomplete":
                # Mid-body failures never reach the client's error hook: count them here.
                self.metrics.upstream_error(fill.error.upstream, fill.error.kind)
        elif fill.source_kind == "upstream":
            self.metrics.fetched(fill.source_name.removeprefix("upstream "),
                                 fill.written - fill.resumed_at)
