"""A write-behind mirror of in-memory records in diskcache.

Owners keep their records in memory (so lookups cost no I/O on the event loop)
and queue every change here; `flush()` writes the queue in one transaction.
load/flush/close block: owners run them on a single I/O thread, which keeps
writes in order.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any, Hashable, Iterator

import diskcache

from edgecache.errors import StoreFull

log = logging.getLogger("edgecache.store")


class DiskMap:
    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._cache: diskcache.Cache | None = None
        self._pending: dict[Hashable, Any] = {}
        self._lock = threading.Lock()   # the loop queues while the I/O thread flushes

    def open(self) -> Iterator[tuple[Any, Any]]:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._cache = diskcache.Cache(str(self._dir), eviction_policy="none",
                                      size_limit=2**62, statistics=False)
        for key in list(self._cache.iterkeys()):
            value = self._cache.get(key)
            if value is not None:
                yield key, value

    def get(self, key: Hashable) -> Any:
        assert self._cache is not None
        return self._cache.get(key)

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._pending[key] = value

    def delete(self, key: Hashable) -> None:
        self.put(key, None)

    def flush(self) -> None:
        """Write the queued changes; on failure they stay queued for the next flush
        (a full disk raises StoreFull)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending or self._cache is None:
            return
        try:
            with self._cache.transact():
                for key, value in pending.items():
                    if value is None:
                        self._cache.delete(key)
                    else:
                        self._cache.set(key, value)
        except sqlite3.Error as e:
            with self._lock:
                self._pending = {**pending, **self._pending}    # newer changes win
            if "full" in str(e):
                raise StoreFull(f"disk full: {self._dir.name} changes not written") from e
            raise

    def close(self) -> None:
        if self._cache is None:
            return
        try:
            self.flush()
        except (StoreFull, sqlite3.Error) as e:
            # The files are the truth: the next start reconciles the records with them.
            log.warning("%s: %d changes not written at close (%s)", self._dir, len(self._pending), e)
        self._cache.close()
        self._cache = None
