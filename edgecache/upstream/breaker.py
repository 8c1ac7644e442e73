"""A per-upstream circuit breaker.

After `failures` consecutive connection failures the upstream is "open" (down)
for a back-off period: callers are refused at once instead of waiting for a
connect timeout, so clients (containerd) move on to their next endpoint. After
the back-off one probe is let through ("half_open"); it closes the breaker or
doubles the back-off, up to max_backoff.
"""
from __future__ import annotations

import time
from typing import Callable


class Breaker:
    def __init__(self, failures: int, backoff: float, max_backoff: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.base_backoff = backoff
        self.max_backoff = max_backoff
        self._clock = clock
        self.consecutive = 0
        self.state = "closed"
        self.opened_at = 0.0
        self.open_until = 0.0
        self._backoff = backoff
        self.opened_count = 0

    def allow(self) -> bool:
        if self.state == "closed":
            return True
        now = self._clock()
        if now >= self.open_until:
            # This caller is the probe. Until it reports, others wait one more back-off:
            # a probe that is cancelled and never reports must not wedge the breaker.
            self.state = "half_open"
            self.open_until = now + self._backoff
            return True
        return False

    def success(self) -> None:
        self.consecutive = 0
        self.state = "closed"
        self._backoff = self.base_backoff

    def failure(self) -> None:
        self.consecutive += 1
        if self.state == "half_open":
            self._backoff = min(self._backoff * 2, self.max_backoff)
            self._open()
        elif self.state == "closed" and self.consecutive >= self.threshold:
            self._open()

    def _open(self) -> None:
        self.state = "open"
        self.opened_at = self._clock()
        self.open_until = self.opened_at + self._backoff
        self.opened_count += 1

    def retry_in(self) -> float:
        return max(0.0, self.open_until - self._clock()) if self.state != "closed" else 0.0
