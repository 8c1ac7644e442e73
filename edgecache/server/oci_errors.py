"""The OCI error table (code, HTTP status, message) and the middleware that
turns domain errors into OCI error bodies. Handlers raise domain errors only."""
from __future__ import annotations

import itertools
import json
from collections import deque
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from aiohttp import web

from edgecache import errors as e
from edgecache.server.accesslog import outcome
from edgecache.server.guard import IDENTITY

log = logging.getLogger("edgecache.server")


@dataclass(frozen=True)
class OciCode:
    code: str
    status: int
    message: str


# distribution-spec "Error Codes", plus Distribution's UNKNOWN (errcode.ErrorCodeUnknown):
# a client knows every code it can get from us.
CODES = {c.code: c for c in (
    OciCode("BLOB_UNKNOWN", 404, "blob unknown to registry"),
    OciCode("DIGEST_INVALID", 400, "provided digest did not match uploaded content"),
    OciCode("MANIFEST_UNKNOWN", 404, "manifest unknown"),
    OciCode("MANIFEST_INVALID", 502, "manifest invalid"),
    OciCode("NAME_INVALID", 400, "invalid repository name"),
    OciCode("NAME_UNKNOWN", 404, "repository name not known to registry"),
    OciCode("UNAUTHORIZED", 401, "authentication required"),
    OciCode("DENIED", 403, "requested access to the resource is denied"),
    OciCode("UNSUPPORTED", 405, "the operation is unsupported"),
    OciCode("TOOMANYREQUESTS", 429, "too many requests"),
    OciCode("RANGE_INVALID", 416, "requested range not satisfiable"),
    OciCode("UNKNOWN", 500, "unknown error"),
)}
API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
CLIENT_GONE = 499
# Error ids: this process's prefix and a counter, so a client's report finds the log line.
_ids = itertools.count(1)
_PREFIX = f"{os.getpid():x}"


class OciError(Exception):
    """An error phrased in OCI terms: its code, status, message, detail and headers."""

    def __init__(self, code: str, detail: object, status: int, message: str,
                 headers: dict[str, str] | None = None) -> None:
        self.oci = CODES[code]
        self.detail = detail
        self.status = status
        self.message = message
        self.headers = headers or {}
        super().__init__(f"{code}: {self.message}")


@dataclass(frozen=True)
class Rule:
    """Domain errors of these types (where `when` holds) answer with this."""

    errors: type[BaseException] | tuple[type[BaseException], ...]
    code: str
    status: int
    message: str
    headers: Callable[[Any], dict[str, str]] | None = None
    when: Callable[[Any], bool] | None = None


def _retry_after(seconds: Callable[[Any], object]) -> Callable[[Any], dict[str, str]]:
    return lambda err: {"Retry-After": str(seconds(err))}


# The domain error -> OCI answer translation, in one place; the first rule that
# matches answers (subclasses before their bases).
RULES = (
    Rule(e.InvalidName, "NAME_INVALID", 400, "invalid repository name"),
    Rule(e.InvalidDigest, "DIGEST_INVALID", 400, "invalid digest"),
    Rule((e.UnknownRegistry, e.NameUnknown), "NAME_UNKNOWN", 404,
         "repository name not known to registry"),
    Rule(e.NoSuchEndpoint, "NAME_UNKNOWN", 404, "not found"),
    Rule(e.ManifestUnknown, "MANIFEST_UNKNOWN", 404, "manifest unknown"),
    Rule(e.BlobUnknown, "BLOB_UNKNOWN", 404, "blob unknown to registry"),
    Rule(e.RangeNotSatisfiable, "RANGE_INVALID", 416, "requested range not satisfiable",
         lambda err: {"Content-Range": f"bytes */{err.size}"}),
    Rule(e.ManifestTooLarge, "MANIFEST_INVALID", 502, "manifest too large"),
    Rule(e.Unsupported, "UNSUPPORTED", 405, "the operation is unsupported",
         lambda err: {"Allow": err.allow} if err.allow else {}),
    Rule(e.RequestTooLarge, "UNSUPPORTED", 413, "the operation is unsupported"),
    Rule(e.UpstreamRateLimited, "TOOMANYREQUESTS", 429, "too many requests",
         lambda err: {"Retry-After": err.retry_after} if err.retry_after else {}),
    Rule(e.Unauthorized, "UNAUTHORIZED", 401, "authentication required",
         lambda err: {"WWW-Authenticate": 'Basic realm="edgecache"'}),
    Rule(e.Forbidden, "DENIED", 403, "requested access to the resource is denied"),
    Rule(e.PolicyDenied, "DENIED", 403, "denied by the signature policy"),
    Rule(e.UpstreamDenied, "DENIED", 403, "the upstream registry denied access"),
    Rule(e.TooManyRequests, "TOOMANYREQUESTS", 429, "too many requests",
         _retry_after(lambda err: err.retry_after)),
    Rule(e.UpstreamDown, "UNKNOWN", 503, "upstream registry is down",
         _retry_after(lambda err: max(1, round(err.retry_in)))),
    Rule(e.BlobTooLarge, "UNKNOWN", 502, "blob larger than the cache"),
    Rule(e.FillAbandoned, "UNKNOWN", 503, "fetch cancelled, try again", _retry_after(lambda _: 1)),
    Rule(e.UpstreamError, "UNKNOWN", 503, "upstream registry failed", when=e.is_unavailable),
    Rule((e.UpstreamError, e.DigestMismatch, e.SizeMismatch), "UNKNOWN", 502,
         "upstream registry failed"),
    Rule(e.HopRefused, "UNKNOWN", 409, "not the fetcher of this blob"),
    Rule(e.StoreFull, "UNKNOWN", 507, "cache disk is full"),
    Rule(e.StoreUnhealthy, "UNKNOWN", 503, "unavailable"),
)
assert all(r.code in CODES for r in RULES)


def to_oci(err: BaseException) -> OciError | None:
    """The OCI answer for a domain error; None for anything else (a 500)."""
    for rule in RULES:
        if isinstance(err, rule.errors) and (rule.when is None or rule.when(err)):
            return OciError(rule.code, str(err), rule.status, rule.message,
                            rule.headers(err) if rule.headers else None)
    return None


def _public_detail(err: BaseException, oci: OciError) -> object:
    """What an anonymous client is told: an upstream's failure names the upstream and
    the kind of failure, never its address or its words (they are in the log)."""
    if isinstance(err, e.UpstreamError):
        return {"upstream": err.upstream, "reason": err.kind}
    if isinstance(err, (e.DigestMismatch, e.SizeMismatch)):
        return {"reason": "wrong bytes from the source"}
    if isinstance(err, e.StoreFull):
        return None
    return oci.detail


def error_response(err: OciError, request_id: str | None = None) -> web.Response:
    """The OCI error body (also its length on HEAD, as for any other answer)."""
    doc: dict = {"code": err.oci.code, "message": err.message, "detail": err.detail}
    if request_id:
        doc["request_id"] = request_id
    body = json.dumps({"errors": [doc]}).encode()
    headers = {**API_VERSION, **err.headers}
    # On HEAD aiohttp sends the headers only, Content-Length that of the body GET gets.
    return web.Response(status=err.status, body=body, content_type="application/json",
                        headers=headers)


# aiohttp's own answers (no route, wrong method, body too large), as domain errors.
_HTTP = {
    404: lambda exc: e.NoSuchEndpoint("no such endpoint"),
    405: lambda exc: e.Unsupported("method not supported by this mirror",
                                   exc.headers.get("Allow")),
    413: lambda exc: e.RequestTooLarge("request body too large"),
}


# aiohttp's other refusals keep their status, with its OCI code where the table has one.
_HTTP_CODES = {401: "UNAUTHORIZED", 403: "DENIED", 429: "TOOMANYREQUESTS"}


def _http_error(exc: web.HTTPException) -> OciError:
    make = _HTTP.get(exc.status)
    if make is not None:
        oci = to_oci(make(exc))
        assert oci is not None
        return oci
    code = _HTTP_CODES.get(exc.status, "UNKNOWN")
    message = CODES[code].message if code != "UNKNOWN" else exc.reason.lower()
    return OciError(code, exc.reason, exc.status, message)


class DenialLog:
    """One log line per client address per interval for refusals (401, 403, 429):
    a flood of wrong passwords must not become a flood of log lines."""

    INTERVAL = 10.0

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, int]] = {}     # address -> (last logged, held back)
        # The last ones, for the status page: (wall time, status, method, path, who, why).
        self.recent: deque[tuple[float, int, str, str, str, str]] = deque(maxlen=50)

    def __call__(self, request: web.Request, exc: BaseException, status: int) -> None:
        now = time.monotonic()
        who = request.remote or "?"
        last, held = self._seen.get(who, (0.0, 0))
        if now - last < self.INTERVAL:
            self._seen[who] = (last, held + 1)
            return
        more = f" (and {held} more in {now - last:.0f} s)" if held else ""
        self.recent.append((time.time(), status, request.method, request.path[:200], who,
                            f"{str(exc)[:300]}{more}"))
        if len(self._seen) > 4096:
            self._seen.clear()
        self._seen[who] = (now, 0)
        more = f" (and {held} more refusals in {now - last:.0f} s)" if held else ""
        log.warning("denied %s %s from %s: %d %s%s", request.method, request.path[:200], who,
                    status, exc, more)


# One per app (its middleware's memory of whom it logged), made in build_app.
DENIAL_LOG = web.AppKey("denial_log", DenialLog)


def new_request_id(request: web.Request) -> str:
    o = outcome(request)
    if o.request_id is None:
        o.request_id = f"{_PREFIX}-{next(_ids)}"
    return o.request_id


def answer(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The answer to a request whose handler raised `exc` (server/endpoint.py): every
    error is an OCI JSON body; anything unexpected is a 500 UNKNOWN whose request id is
    in the body and on the log line with the traceback. Re-raises what is not an error
    (an HTTPException below 400: a redirect is an answer)."""
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        oci = _http_error(exc)
    elif isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        # The client went away before its answer: nobody to tell, one line to log; the
        # access log says 499 (nginx's "client closed request"), aiohttp writes nothing.
        outcome(request).error = "client gone"
        log.info("%s %s: client gone before the answer (%s)", request.method,
                 request.path[:200], exc or type(exc).__name__)
        return web.Response(status=CLIENT_GONE)
    else:
        oci = to_oci(exc)
        if oci is None:
            rid = new_request_id(request)
            log.error("%s %s -> 500 [%s]", request.method, request.path[:200], rid,
                      exc_info=exc)
            oci = OciError("UNKNOWN", None, 500, "internal error")
        else:
            if oci.status in (401, 403, 429):
                request.app[DENIAL_LOG](request, exc, oci.status)
            elif oci.status >= 500:
                rid = new_request_id(request)
                log.warning("%s %s -> %d %s [%s]: %s", request.method, request.path[:200],
                            oci.status, oci.oci.code, rid, exc)
            if request.get(IDENTITY) is None:
                oci.detail = _public_detail(exc, oci)
    o = outcome(request)
    o.error = oci.oci.code
    return error_response(oci, o.request_id)
