"""The fills under way: single flight per digest, and fills nobody wants any more.

At most one shared Fill per digest, across every repository and upstream (a
request that may not have the shared one's bytes gets one of its own, shared only
through its route). A fill that no reader or waiter has wanted for
`abandon_after` is cancelled, unless it is sync work or `finish_fraction` done.
"""
from __future__ import annotations

import asyncio
from typing import Callable

from edgecache.pull.fill import FallbackFactory, Fill, SourceFactory, SourceKind
from edgecache.reference import Digest
from edgecache.store.blobs import BlobStore

class FillRegistry:
    """The fills under way, by digest (and by route for a route's own bytes)."""

    def __init__(self, store: BlobStore, *, abandon_after: float = 10.0,
                 finish_fraction: float = 0.5) -> None:
        self.store = store
        self.abandon_after = abandon_after
        self.finish_fraction = finish_fraction
        self.abandoned = 0          # fills cancelled because nobody waited for them
        self._fills: dict[str, Fill] = {}
        # Fills of a digest for one route alone (its upstream's own bytes were wanted):
        # joined only by requests through that same route.
        self._own: dict[tuple[str, object], Fill] = {}
        self.coalesced = 0          # requests that joined a fill another request started
        self.on_finish: Callable[[Fill], None] | None = None

    def get(self, digest: Digest) -> Fill | None:
        """The shared fill under way for digest. One that has stored its blob is not
        (it is finishing; the blob is the store's now, and may be evicted already)."""
        fill = self._fills.get(str(digest))
        return None if fill is None or fill.abandoned or fill.stored else fill

    def start(self, digest: Digest, open_source: SourceFactory, *, expected_size: int | None,
              source_name: str, origin: object = None,
              fallback: FallbackFactory | None = None, kind: SourceKind | None = None,
              link: tuple[str, str] | None = None, shared: bool = True) -> Fill:
        key = str(digest)
        existing = self._fills.get(key) if shared else self._own.get((key, origin))
        if existing is not None and existing.error is None and existing.relay is None \
                and not existing.abandoned and not existing.stored:
            self.coalesced += 1
            return existing
        fill = Fill(digest, self.store, open_source, expected_size, source_name, origin, fallback,
                    kind, link)
        fill.on_idle = self._watch
        if shared:
            self._fills[key] = fill
        else:
            self._own[(key, origin)] = fill
        fill.start()
        assert fill.task is not None
        fill.task.add_done_callback(lambda _t: self._finished(key, fill))
        self._watch(fill)           # its starter waits for it at once, or nobody does
        return fill

    def _watch(self, fill: Fill) -> None:
        """Look again when the fill has had nobody for abandon_after."""
        asyncio.get_running_loop().call_later(self.abandon_after, self._check, fill)

    def _check(self, fill: Fill) -> None:
        if fill.done or fill.keep or fill.idle_since is None:
            return
        idle = asyncio.get_running_loop().time() - fill.idle_since
        if idle < self.abandon_after:
            return                  # wanted again meanwhile: its own idle watch comes later
        if fill.size and fill.written >= self.finish_fraction * fill.size:
            return                  # nearly there: cheaper to keep than to fetch again
        self.abandoned += 1
        fill.abandon()

    def _finished(self, key: str, fill: Fill) -> None:
        if self._fills.get(key) is fill:
            del self._fills[key]
        if self._own.get((key, fill.origin)) is fill:
            del self._own[(key, fill.origin)]
        if self.on_finish:
            self.on_finish(fill)

    def active(self) -> list[Fill]:
        return [*self._fills.values(), *self._own.values()]

    async def close(self) -> None:
        tasks = [f.task for f in self.active() if f.task]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
