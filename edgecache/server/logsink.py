"""The access log's writer: lines handed over in O(1) on the event loop and written
by a thread of its own, many per write, so a request never waits on stdout (a
pipe to journald, a file, a terminal).

Lines gather for LINGER before each write: under load one wake-up and one write per
LINGER, not per line (a thread woken per request contends for the GIL with the loop
that serves it). Bounded: when the writer falls behind by MAX_PENDING lines (stdout blocked), new
lines are dropped and counted, and the count is written once it catches up.
Attached to a logger as a logging.Handler, so other records to it go the same way;
the access logger hands over its fields (put_fields), past logging's machinery, and
they are made into a line here, by `render`, in this thread: off the loop, in a tight
loop over the batch.
"""
from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Callable, TextIO

MAX_PENDING = 16_384  # lines or records not written yet (a record: under 1 KiB, its URL cut)
LINGER = 0.05         # seconds a line may wait for company before it is written


class LineSink(logging.Handler):
    def __init__(self, stream: TextIO, render: Callable[..., str] | None = None) -> None:
        super().__init__()
        self.stream = stream
        self.render = render            # fields -> line, for put_fields
        self.dropped = 0
        self._lines: collections.deque[str | tuple] = collections.deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    def start(self) -> "LineSink":
        self._thread = threading.Thread(target=self._write_forever, name="access log writer",
                                        daemon=True)
        self._thread.start()
        return self

    def put_line(self, line: "str | tuple[Any, ...]") -> None:
        """On the event loop: one append (and a wake-up when the writer is idle: at
        most once per LINGER)."""
        lines = self._lines
        if len(lines) >= MAX_PENDING:
            self.dropped += 1
            return
        lines.append(line)
        if len(lines) == 1:
            self._wake.set()

    def put_fields(self, fields: tuple[Any, ...]) -> None:
        """A line to be made by render(*fields) in the writer's thread: the fields
        must not change once handed over."""
        self.put_line(fields)

    def _line(self, item: "str | tuple[Any, ...]") -> str:
        if item.__class__ is str:
            return item       # type: ignore[return-value]
        assert self.render is not None
        try:
            return self.render(*item)
        except Exception as e:   # noqa: BLE001 - one bad record must not stop the log
            return f'{{"edgecache_access_log":"a line could not be written: {type(e).__name__}"}}'

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.put_line(self.format(record))
        except Exception:   # noqa: BLE001 - logging's contract: never raise
            self.handleError(record)

    def _write_forever(self) -> None:
        lines = self._lines
        while True:
            self._wake.wait()
            self._stopping.wait(LINGER)          # returns at once when closing
            self._wake.clear()
            batch = []
            line = self._line
            while lines:
                batch.append(line(lines.popleft()))
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
            self._stopping.set()
            self._wake.set()
            self._thread.join(timeout=5)
            self._thread = None
        super().close()
