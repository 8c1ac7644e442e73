"""One structured (JSON) access-log line per request, with its time (UTC, ms)."""
from __future__ import annotations

import json
import logging
import time as _time

from aiohttp.abc import AbstractAccessLogger
from aiohttp import web
from aiohttp.web import BaseRequest, StreamResponse

from edgecache.server.logsink import LineSink


# What handlers tell the access log about a request.
T0 = web.RequestKey("ec_t0", float)
SOURCE = web.RequestKey("ec_source", str)       # local | upstream
BYTES = web.RequestKey("ec_bytes", int)         # body bytes actually sent
STALE = web.RequestKey("ec_stale", bool)
ERROR = web.RequestKey("ec_error", str)
REQUEST_ID = web.RequestKey("ec_request_id", str)   # given to errors only (oci_errors.py)


@web.middleware
async def timing_middleware(request: web.Request, handler) -> StreamResponse:
    # uvloop's clock, which aiohttp hands the logger, ticks in whole milliseconds.
    request[T0] = _time.perf_counter()
    return await handler(request)


_second: list = [-1, ""]       # the last whole second formatted, and its text


def _timestamp(now: float) -> str:
    """ISO 8601 UTC with milliseconds; the seconds part formatted once a second."""
    sec = int(now)
    if sec != _second[0]:
        _second[:] = [sec, _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(sec))]
    return f"{_second[1]}.{int((now - sec) * 1000):03d}Z"


class JsonAccessLogger(AbstractAccessLogger):
    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        # The logger's LineSink, if it has one (the daemon's): lines go to it directly.
        # Without one (tests, embedding), through logging as any record.
        self._sink = next((h for h in logger.handlers if isinstance(h, LineSink)), None)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        line = {
            "time": _timestamp(_time.time()),
            "method": request.method,
            "path": request.path_qs[:512],
            "status": response.status,
            "bytes": request.get(BYTES, response.body_length),
            "source": request.get(SOURCE, "local"),
            "duration_ms": round(((_time.perf_counter() - request[T0]) if T0 in request
                                  else time) * 1000, 3),
            "remote": request.remote,
        }
        if request.get(STALE):
            line["stale"] = True
        if ERROR in request:
            line["error"] = request[ERROR]
        if REQUEST_ID in request:
            line["request_id"] = request[REQUEST_ID]
        text = json.dumps(line, separators=(",", ":"))
        sink = self._sink
        if sink is not None:
            sink.put_line(text)          # written by the sink's thread, not here
        else:
            self.logger.info(text)


    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
