"""One structured (JSON) access-log line per request."""
from __future__ import annotations

import json
import logging
import time as _time

from aiohttp.abc import AbstractAccessLogger
from aiohttp import web
from aiohttp.web import BaseRequest, StreamResponse


@web.middleware
async def timing_middleware(request: web.Request, handler) -> StreamResponse:
    # uvloop's clock, which aiohttp hands the logger, ticks in whole milliseconds.
    request["ec_t0"] = _time.perf_counter()
    return await handler(request)


class JsonAccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        line = {
            "method": request.method,
            "path": request.path_qs[:512],
            "status": response.status,
            "bytes": request.get("ec_bytes", response.body_length),
            "source": request.get("ec_source", "local"),
            "duration_ms": round(((_time.perf_counter() - request["ec_t0"]) if "ec_t0" in request
                                  else time) * 1000, 3),
            "remote": request.remote,
        }
        if request.get("ec_stale"):
            line["stale"] = True
        if "ec_error" in request:
            line["error"] = request["ec_error"]
        self.logger.info(json.dumps(line, separators=(",", ":")))

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
