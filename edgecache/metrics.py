"""Counters for /metrics (Prometheus) and /_edgecache/status.

One Metrics object per app, with its own CollectorRegistry: no global state,
so tests can run several apps in one process. Gauges that mirror state owned
elsewhere (store sizes, breaker states) are read at scrape time.
"""
from __future__ import annotations

from typing import Callable, Iterable

import platform
import time

from prometheus_client import metrics as prometheus_metrics
from prometheus_client import (CollectorRegistry, Counter, Gauge, PlatformCollector,
                               ProcessCollector, generate_latest)
from prometheus_client.core import GaugeMetricFamily, CounterMetricFamily
from prometheus_client.registry import Collector

from edgecache.recent import Recent

SOURCES = ("local", "upstream")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # Counted on every request: plain ints here (a prometheus_client counter takes a
        # lock per increment), read at scrape time by _hot_counters. Touched on the loop only.
        self._hit_counts: dict[tuple[str, str], int] = {}       # (kind, upstream) -> requests
        self._miss_counts: dict[tuple[str, str], int] = {}
        self.served_bytes: dict[str, int] = {}    # source -> bytes
        self._policy_counts: dict[tuple[str, str], int] = {}    # (rule, result) -> answers
        # When each of those series began (its *_created sample, as prometheus_client's own).
        self._created: dict[tuple[str, ...], float] = {}
        r.register(_FnCollector(self._hot_counters))
        # This process (CPU, RSS, open fds, start time) and what it is.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        from edgecache import __version__
        Gauge("edgecache_build_info", "The running edgecache: its version and Python",
              ["version", "python"], registry=r).labels(__version__,
                                                        platform.python_version()).set(1)
        self._coalesced = Counter("edgecache_coalesced_waiters",
                                  "Requests that joined a fill already in progress", registry=r)
        self._upstream_errors = Counter("edgecache_upstream_errors", "Upstream failures by kind",
                                        ["upstream", "kind"], registry=r)
        self._stale = Counter("edgecache_stale_serves",
                              "Tags answered from cache because the upstream failed",
                              ["upstream"], registry=r)
        self._fill_failures = Counter("edgecache_fill_failures",
                                      "Fills aborted (truncation, wrong bytes, disk full, ...)",
                                      ["reason"], registry=r)
        self._fetched = Counter("edgecache_upstream_fetched_bytes",
                                "Blob bytes fetched from each upstream", ["upstream"], registry=r)
        self.hits = 0
        self.misses = 0
        self.recent = Recent()                    # the last hour, for the status page

    def hit(self, kind: str, upstream: str) -> None:
        self.hits += 1
        self.recent.hit()
        key = (kind, upstream)
        n = self._hit_counts.get(key)
        if n is None:
            n = self._begun("hits", kind, upstream)
        self._hit_counts[key] = n + 1

    def miss(self, kind: str, upstream: str) -> None:
        self.misses += 1
        self.recent.miss()
        key = (kind, upstream)
        n = self._miss_counts.get(key)
        if n is None:
            n = self._begun("misses", kind, upstream)
        self._miss_counts[key] = n + 1

    def _begun(self, *series: str) -> int:
        self._created[series] = time.time()
        return 0

    def _hot_counters(self) -> Iterable:
        # As prometheus_client's own counters: no *_created where it was switched off
        # (PROMETHEUS_DISABLE_CREATED_SERIES, disable_created_metrics()).
        created = self._created if getattr(prometheus_metrics, "_use_created", True) else {}
        yield labelled_counter("edgecache_cache_hits", "Requests answered from the local cache",
                               ["kind", "upstream"],
                               [(list(k), v, created.get(("hits", *k)))
                                for k, v in list(self._hit_counts.items())])
        yield labelled_counter("edgecache_cache_misses", "Requests that needed the upstream",
                               ["kind", "upstream"],
                               [(list(k), v, created.get(("misses", *k)))
                                for k, v in list(self._miss_counts.items())])
        yield labelled_counter("edgecache_served_bytes", "Body bytes served, by source",
                               ["source"], [([k], v, created.get(("served", k)))
                                            for k, v in list(self.served_bytes.items())])
        yield labelled_counter("edgecache_policy_decisions",
                               "Manifest answers checked by a signature policy rule, by result "
                               "(verified, exempt, denied, warned)", ["rule", "result"],
                               [(list(k), v, created.get(("policy", *k)))
                                for k, v in list(self._policy_counts.items())])

    def served(self, source: str, nbytes: int) -> None:
        if nbytes:
            n = self.served_bytes.get(source)
            if n is None:
                n = self._begun("served", source)
            self.served_bytes[source] = n + nbytes
            self.recent.served(source, nbytes)

    def coalesced(self) -> None:
        self._coalesced.inc()

    def upstream_error(self, upstream: str, kind: str) -> None:
        self._upstream_errors.labels(upstream, kind).inc()

    def stale(self, upstream: str, detail: str = "") -> None:
        self.recent.error("stale", f"{upstream}: {detail}" if detail else upstream)
        self._stale.labels(upstream).inc()

    def policy(self, rule: str, result: str) -> None:
        key = (rule, result)
        n = self._policy_counts.get(key)
        if n is None:
            n = self._begun("policy", rule, result)
        self._policy_counts[key] = n + 1

    def fill_failed(self, reason: str, detail: str = "") -> None:
        self.recent.error("fill failed", f"{reason}: {detail}" if detail else reason)
        self._fill_failures.labels(reason).inc()

    def fetched(self, upstream: str, nbytes: int) -> None:
        if nbytes:
            self._fetched.labels(upstream).inc(nbytes)

    def hit_ratio(self) -> float | None:
        total = self.hits + self.misses
        return round(self.hits / total, 4) if total else None

    def add_state(self, collect: Callable[[], Iterable]) -> None:
        """Register a scrape-time collector of gauges/counters owned elsewhere."""
        self.registry.register(_FnCollector(collect))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _FnCollector(Collector):
    def __init__(self, fn: Callable[[], Iterable]) -> None:
        self._fn = fn

    def collect(self) -> Iterable:
        return self._fn()

    def describe(self) -> Iterable:
        return []


def gauge(name: str, doc: str, labels: list[str] | None = None,
          samples: Iterable[tuple[list[str], float]] = ()) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=labels or [])
    for lv, v in samples:
        g.add_metric(lv, v)
    return g


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def labelled_counter(name: str, doc: str, labels: list[str],
                     samples: Iterable[tuple]) -> CounterMetricFamily:
    """samples: (label values, value) or (label values, value, created: epoch seconds)."""
    c = CounterMetricFamily(name, doc, labels=labels)
    for lv, v, *created in samples:
        c.add_metric(lv, v, created=created[0] if created else None)
    return c
