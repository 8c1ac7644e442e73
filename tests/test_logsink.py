"""server/logsink.py: the access log's lines written by a thread of their own, in
order, many per write; bounded when the writer is stuck (dropped lines counted and
said); everything pending written at close."""
import io
import json
import threading

import edgecache.server.logsink as logsink
from edgecache.server.logsink import LineSink


class StuckStream(io.StringIO):
    """A stdout that blocks until released (a pipe nobody reads), counting writes."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.writes = 0

    def write(self, s: str) -> int:
        self.release.wait(10)
        self.writes += 1
        return super().write(s)


def test_lines_in_order_in_few_writes_and_pending_ones_written_at_close():
    out = StuckStream()
    sink = LineSink(out).start()
    for i in range(10_000):
        sink.put_line(json.dumps({"n": i}))
    out.release.set()
    sink.close()
    lines = out.getvalue().splitlines()
    assert [json.loads(x)["n"] for x in lines] == list(range(10_000))
    assert out.writes < 100                      # batched, not a write per line


def test_a_stuck_writer_bounds_memory_and_says_how_many_lines_it_dropped(monkeypatch):
    monkeypatch.setattr(logsink, "MAX_PENDING", 100)
    out = StuckStream()
    sink = LineSink(out).start()
    sink.put_line("first")                       # taken by the writer, which then blocks
    for _ in range(50):
        if not sink._lines:
            break
        threading.Event().wait(0.01)
    for i in range(250):
        sink.put_line(f"line {i}")
    assert len(sink._lines) == 100 and sink.dropped == 150
    out.release.set()
    sink.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "first" and lines[1:101] == [f"line {i}" for i in range(100)]
    assert json.loads(lines[101]) == {"edgecache_access_log": "150 lines dropped: the writer fell behind"}
