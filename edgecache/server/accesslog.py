"""One structured (JSON) access-log line per request, with its time (UTC, ms)."""
from __future__ import annotations

import json
import logging
import time as _time

from aiohttp.abc import AbstractAccessLogger
from aiohttp import web
from aiohttp.web import BaseRequest, StreamResponse
from yarl import URL

from edgecache.server.logsink import LineSink


class Outcome:
    """What a request came to, as handlers tell its access-log line: one object per
    request, its attributes set where they are known (cheaper than a request key each)."""

    __slots__ = ("t0", "source", "bytes", "stale", "error", "request_id")

    def __init__(self, t0: float) -> None:
        self.t0 = t0                          # perf_counter: uvloop's clock ticks in whole ms
        self.source = "local"                 # local | sibling | upstream
        self.bytes: int | None = None         # body bytes actually sent (None: the body's length)
        self.stale = False
        self.error: str | None = None
        self.request_id: str | None = None    # given to errors only (oci_errors.py)


OUTCOME = web.RequestKey("ec_outcome", Outcome)


def outcome(request: web.BaseRequest) -> Outcome:
    """The request's Outcome (made here for one that did not come through endpoint.py)."""
    try:
        return request[OUTCOME]
    except KeyError:
        o = request[OUTCOME] = Outcome(_time.perf_counter())
        return o


_last_second: tuple[int, str] = (-1, "")   # the last whole second formatted, and its text
_last_ms: tuple[int, str] = (-1, "")       # the last millisecond, and its timestamp


def _timestamp(now: float) -> str:
    """ISO 8601 UTC with milliseconds; the seconds part formatted once a second, the
    whole once a millisecond (each pair replaced whole: safe from any thread)."""
    global _last_second, _last_ms
    ms = int(now * 1000)
    held = _last_ms
    if held[0] == ms:
        return held[1]
    sec = ms // 1000
    second = _last_second
    if second[0] != sec:
        second = _last_second = (sec, _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(sec)))
    text = f"{second[1]}.{ms - sec * 1000:03d}Z"
    _last_ms = (ms, text)
    return text


PATH_KEPT = 512          # characters of a request's URL its line shows
URL_HANDED_OVER = 256    # longer URLs (or with several parameters) are queued as text

_quoted_known: dict[str, str] = {}    # paths, addresses and words repeat: quoted once
QUOTED_KEPT = 4096


def _quoted(text: str | None) -> str:
    """`text` as a JSON string, as json.dumps writes it; most paths and addresses need
    no escaping, and are written as they are (a tenth of json.dumps' time)."""
    if text is None:
        return "null"
    got = _quoted_known.get(text)
    if got is not None:
        return got
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        got = f'"{text}"'
    else:
        got = json.dumps(text)
    if len(text) <= 256:
        if len(_quoted_known) >= QUOTED_KEPT:
            _quoted_known.clear()
        _quoted_known[text] = got
    return got


def access_line(now: float, method: str, url: URL | str, status: int, nbytes: int | None,
                source: str, seconds: float, remote: str | None, stale: bool,
                error: str | None, request_id: str | None) -> str:
    """One line, byte for byte what json.dumps of the fields in this order would give.
    Made in the LineSink's thread: `url` is the request's (immutable) relative URL, or
    its first PATH_KEPT characters;
    `seconds` its duration (rounding a float to 3 places costs a microsecond: here)."""
    duration_ms = round(seconds * 1000, 3)
    line = (f'{{"time":"{_timestamp(now)}","method":{_quoted(method)},'
            f'"path":{_quoted(str(url)[:PATH_KEPT])},'
            f'"status":{status},"bytes":{"null" if nbytes is None else nbytes},'
            f'"source":{_quoted(source)},"duration_ms":{duration_ms!r},"remote":{_quoted(remote)}')
    if stale:
        line += ',"stale":true'
    if error is not None:
        line += f',"error":{_quoted(error)}'
    if request_id is not None:
        line += f',"request_id":{_quoted(request_id)}'
    return line + "}"


class JsonAccessLogger(AbstractAccessLogger):
    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        # The logger's LineSink, if it has one (the daemon's) and it makes access lines:
        # fields go to it directly. Otherwise (tests, embedding), through logging.
        self._sink = next((h for h in logger.handlers
                           if isinstance(h, LineSink) and h.render is access_line), None)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        try:
            o = request[OUTCOME]
        except KeyError:                      # answered by aiohttp itself (a malformed head)
            o = None
        if o is None:
            duration, nbytes, source, stale, error, rid = time, None, "local", False, None, None
        else:
            duration = _time.perf_counter() - o.t0
            nbytes, source, stale, error, rid = o.bytes, o.source, o.stale, o.error, o.request_id
        url: URL | str = request.rel_url
        if len(request.raw_path) > URL_HANDED_OVER or "&" in request.query_string:
            # A queued record must stay small (16,384 of them wait when stdout blocks),
            # and a URL object keeps its parsed query (a handler's ns lookup): one with
            # many parameters holds ~40 bytes per character. Such a URL is made into the
            # text its line shows now; the usual short one is rendered in the thread.
            url = str(url)[:PATH_KEPT]
        fields = (_time.time(), request.method, url, response.status,
                  response.body_length if nbytes is None else nbytes, source,
                  duration, request.remote, stale, error, rid)
        sink = self._sink
        if sink is not None:
            sink.put_fields(fields)      # made into a line and written by the sink's thread
        else:
            self.logger.info(access_line(*fields))

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
