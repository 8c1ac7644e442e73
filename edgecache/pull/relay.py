"""The disk-full relay: when the disk fills up during a fill, the rest of the blob
is kept in memory for the readers already attached, and dropped as the slowest of
them passes it. None of it is cached; the fill's source waits (back-pressure)
while the slowest reader is MEM_LIMIT behind."""
from __future__ import annotations

MEM_LIMIT = 16 << 20       # memory a disk-full fill may hold ahead of its slowest reader


class MemoryRelay:
    def __init__(self, base: int) -> None:
        self.base = base                # the blob offset of the first byte held
        self._buf = bytearray()

    @property
    def end(self) -> int:
        return self.base + len(self._buf)

    @property
    def held(self) -> int:
        return len(self._buf)

    def over_limit(self) -> bool:
        return len(self._buf) > MEM_LIMIT

    def append(self, data: bytes) -> None:
        self._buf += data

    def holds(self, pos: int) -> bool:
        """Whether offset pos is in memory (else it was written to the file before)."""
        return pos >= self.base

    def read(self, pos: int, limit: int) -> bytes:
        return bytes(self._buf[pos - self.base: limit - self.base])

    def drop_before(self, low: int) -> bool:
        """Forget what every reader has passed (low: the slowest one's offset)."""
        drop = min(len(self._buf), low - self.base)
        if drop <= 0:
            return False
        del self._buf[:drop]
        self.base += drop
        return True
