"""The last hour, for the status page: per-minute counts of hits, misses and bytes
served by source, and the last errors (denials, failed fills, stale answers).
Updated where the counters are (metrics.py), in O(1) per event, bounded."""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

MINUTES = 60
ERRORS_KEPT = 50
SOURCES = ("local", "sibling", "upstream")


@dataclass
class Minute:
    at: int                                    # minutes since the epoch
    hits: int = 0
    misses: int = 0
    served: dict[str, int] = field(default_factory=dict)     # source -> bytes


@dataclass(frozen=True)
class RecentError:
    at: float
    kind: str           # "denied", "fill failed", "stale", "policy"
    detail: str


class Recent:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._minutes: deque[Minute] = deque(maxlen=MINUTES)
        self.errors: deque[RecentError] = deque(maxlen=ERRORS_KEPT)

    def _now(self) -> Minute:
        at = int(self.clock() // 60)
        if not self._minutes or self._minutes[-1].at != at:
            self._minutes.append(Minute(at))
        return self._minutes[-1]

    def hit(self) -> None:
        self._now().hits += 1

    def miss(self) -> None:
        self._now().misses += 1

    def served(self, source: str, nbytes: int) -> None:
        m = self._now()
        m.served[source] = m.served.get(source, 0) + nbytes

    def error(self, kind: str, detail: str) -> None:
        self.errors.append(RecentError(self.clock(), kind, detail[:300]))

    def minutes(self) -> list[Minute]:
        """The last hour, one entry per minute, oldest first (quiet minutes as zeros)."""
        now = int(self.clock() // 60)
        held = {m.at: m for m in self._minutes}
        return [held.get(at, Minute(at)) for at in range(now - MINUTES + 1, now + 1)]
