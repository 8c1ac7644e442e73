"""Blobs: from the store when present, else from the one fill for that digest."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from edgecache.errors import (BlobUnknown, DigestMismatch, SizeMismatch, StoreFull,
                              UpstreamError, UpstreamNotFound)
from edgecache.metrics import Metrics
from edgecache.pull.fill import Fill, FillRegistry
from edgecache.pull.routing import Route
from edgecache.reference import Digest
from edgecache.store.blobs import BlobStore
from edgecache.upstream.client import Upstreams


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
    def __init__(self, store: BlobStore, fills: FillRegistry, upstreams: Upstreams,
                 metrics: Metrics) -> None:
        self.store = store
        self.fills = fills
        self.upstreams = upstreams
        self.metrics = metrics
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
            if fill is not None and fill.origin == route:
                return await fill.wait_headers()
            return await self.upstreams.get(route.upstream).head_blob(route.repo, str(digest))
        except UpstreamNotFound:
            raise BlobUnknown(str(digest)) from None

    def _start(self, route: Route, digest: Digest) -> Fill:
        client = self.upstreams.get(route.upstream)
        fill = self.fills.start(digest, lambda: client.blob(route.repo, str(digest)),
                                expected_size=None, source_name=f"upstream {route.upstream}",
                                origin=route)
        return fill

    async def get(self, route: Route, digest: Digest) -> LocalBlob | Fill:
        if (b := self.local(digest)) is not None:
            self.metrics.hit("blob")
            return b
        self.metrics.miss("blob")
        joined = self.fills.get(digest) is not None
        fill = self._start(route, digest)
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
            fill = self._start(route, digest)
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
        else:
            self.metrics.fetched(fill.source_name.removeprefix("upstream "), fill.written)
