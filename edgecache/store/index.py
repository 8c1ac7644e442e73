"""The blob index: size, last use and pins of every committed blob.

Memory holds the LRU order (an OrderedDict, oldest first) so a hit costs no I/O;
diskcache holds the same records across restarts. Mutations change memory at
once and queue a write; `flush()` applies the queue in one transaction and is
run by the owner on a single I/O thread, so writes land in order and never on
the event loop. A use (touch) changes memory only, and the owner hands the uses to
the queue once per flush (save_touched, on the loop): a hit takes no lock and makes
no record. A crash loses at most the last few seconds of "last used" times; sizes
and pins are flushed as soon as they change.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from edgecache.store.diskmap import DiskMap

_CLEAN = ("state", "clean-shutdown")


@dataclass
class Entry:
    size: int
    atime: float


class BlobIndex:
    def __init__(self, directory: Path) -> None:
        self._disk = DiskMap(directory)
        self._lru: OrderedDict[str, Entry] = OrderedDict()
        self._pins: dict[str, frozenset[str]] = {}
        self._touched: set[str] = set()       # used since the last save_touched()
        self.total_bytes = 0
        self.pinned_bytes = 0

    # -- lifecycle (blocking: call off the event loop) -------------------------

    def load(self) -> bool:
        """Open and read the records; True when the last shutdown was clean."""
        records: list[tuple[float, str, int]] = []
        clean = False
        for key, value in self._disk.open():
            kind, name = key
            if key == _CLEAN:
                clean = bool(value)
            elif kind == "blob":
                size, atime = value
                records.append((atime, name, size))
            elif kind == "pin" and value:
                self._pins[name] = frozenset(value)
        for atime, name, size in sorted(records):
            self._lru[name] = Entry(size, atime)
            self.total_bytes += size
        self.pinned_bytes = sum(e.size for d, e in self._lru.items() if d in self._pins)
        # Until the next clean close, a start must assume a crash happened.
        self._disk.delete(_CLEAN)
        self._disk.flush()
        return clean

    def flush(self) -> None:
        self._disk.flush()

    def save_touched(self) -> None:
        """Queue the last-use times of the blobs used since the last call. On the event
        loop, where blobs are used and removed: a removed blob is not written back."""
        touched, self._touched = self._touched, set()
        for digest in touched:
            e = self._lru.get(digest)
            if e is not None:
                self._disk.put(("blob", digest), (e.size, e.atime))

    def close(self) -> None:
        """A clean close: the next start may trust the records without a disk walk."""
        self.save_touched()
        self._disk.put(_CLEAN, True)
        self._disk.close()

    # -- records ---------------------------------------------------------------

    def __contains__(self, digest: str) -> bool:
        return digest in self._lru

    def __len__(self) -> int:
        return len(self._lru)

    def size(self, digest: str) -> int | None:
        e = self._lru.get(digest)
        return e.size if e else None

    def add(self, digest: str, size: int, atime: float | None = None) -> None:
        if digest in self._lru:
            self.touch(digest)
            return
        e = Entry(size, atime or time.time())
        self._lru[digest] = e
        self.total_bytes += size
        if digest in self._pins:
            self.pinned_bytes += size
        self._disk.put(("blob", digest), (e.size, e.atime))

    def touch(self, digest: str) -> None:
        e = self._lru.get(digest)
        if e is None:
            return
        e.atime = time.time()
        self._lru.move_to_end(digest)
        self._touched.add(digest)

    def remove(self, digest: str) -> None:
        e = self._lru.pop(digest, None)
        if e is None:
            return
        self.total_bytes -= e.size
        if digest in self._pins:
            self.pinned_bytes -= e.size
        self._disk.delete(("blob", digest))

    def digests(self) -> list[str]:
        return list(self._lru)

    def oldest_first(self) -> Iterator[tuple[str, Entry]]:
        # A snapshot: callers await between steps and the order may change under them.
        return iter(list(self._lru.items()))

    # -- pins ------------------------------------------------------------------

    def is_pinned(self, digest: str) -> bool:
        return digest in self._pins

    def pins(self, digest: str) -> frozenset[str]:
        return self._pins.get(digest, frozenset())

    def pin(self, digest: str, owner: str) -> None:
        before = self._pins.get(digest, frozenset())
        if owner in before:
            return
        if not before and digest in self._lru:
            self.pinned_bytes += self._lru[digest].size
        self._pins[digest] = before | {owner}
        self._disk.put(("pin", digest), tuple(sorted(self._pins[digest])))

    def unpin(self, digest: str, owner: str) -> None:
        before = self._pins.get(digest, frozenset())
        if owner not in before:
            return
        after = before - {owner}
        if after:
            self._pins[digest] = after
            self._disk.put(("pin", digest), tuple(sorted(after)))
        else:
            del self._pins[digest]
            if digest in self._lru:
                self.pinned_bytes -= self._lru[digest].size
            self._disk.delete(("pin", digest))

    def pin_items(self) -> list[tuple[str, frozenset[str]]]:
        return list(self._pins.items())

    def owners(self) -> set[str]:
        return {o for owners in self._pins.values() for o in owners}

    @property
    def unpinned_bytes(self) -> int:
        return self.total_bytes - self.pinned_bytes
