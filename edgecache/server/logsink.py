"""The access log's writer: lines handed over in O(1) on the event loop and written
by a thread of its own, many per write, so a request never waits on stdout (a
pipe to journald, a file, a terminal).

Bounded: when the writer falls behind by MAX_PENDING lines (stdout blocked), new
lines are dropped and counted, and the count is written once it catches up.
Attached to a logger as a logging.Handler, so other records to it go the same way;
the access logger hands over finished lines directly (put_line), past logging's
machinery.
"""
from __future__ import annotations

import collections
import logging
import threading
from typing import TextIO

MAX_PENDING = 65_536


class LineSink(logging.Handler):
    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.dropped = 0
        self._lines: collections.deque[str] = collections.deque()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    def start(self) -> "LineSink":
        self._thread = threading.Thread(target=self._write_forever, name="access log writer",
                                        daemon=True)
        self._thread.start()
        return self

    def put_line(self, line: str) -> None:
        """On the event loop: one append (and a wake-up when the writer is idle)."""
        lines = self._lines
        if len(lines) >= MAX_PENDING:
            self.dropped += 1
            return
        lines.append(line)
        if len(lines) == 1:
            self._wake.set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.put_line(self.format(record))
        except Exception:   # noqa: BLE001 - logging's contract: never raise
            self.handleError(record)

    def _write_forever(self) -> None:
        lines = self._lines
        while True:
            self._wake.wait()
            self._wake.clear()
            batch = []
            while lines:
                batch.append(lines.popleft())
            if self.dropped:
                batch.append(f'{{"edgecache_access_log":"{self.dropped} lines dropped: the '
                             'writer fell behind"}')
                self.dropped = 0
            if batch:
                try:
                    self.stream.write("\n".join(batch) + "\n")
                    self.stream.flush()
                except (OSError, ValueError):
                    pass            # stdout gone: nothing to tell, nowhere to tell it
            if self._stop and not lines:
                return

    def close(self) -> None:
        """Write what is pending, then stop the thread."""
        if self._thread is not None:
            self._stop = True
            self._wake.set()
            self._thread.join(timeout=5)
            self._thread = None
        super().close()
