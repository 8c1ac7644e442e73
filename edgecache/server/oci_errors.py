"""The OCI error table (code, HTTP status, message) and the middleware that
turns domain errors into OCI error bodies. Handlers raise domain errors only."""
from __future__ import annotations

import itertools
import json
import logging
import os
import time
from dataclasses import dataclass

from aiohttp import web

from edgecache import errors as e
from edgecache.server.accesslog import ERROR, REQUEST_ID
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
    """An error already phrased in OCI terms, with optional extra headers."""

    def __init__(self, code: str, detail: object = None, *, status: int | None = None,
                 message: str | None = None, headers: dict[str, str] | None = None) -> None:
        self.oci = CODES[code]
        self.detail = detail
        self.status = status or self.oci.status
        self.message = message or self.oci.message
        self.headers = headers or {}
        super().__init__(f"{code}: {self.message}")


def to_oci(err: BaseException) -> OciError | None:
    """The domain error -> OCI error translation, in one place."""
    if isinstance(err, OciError):
        return err
    if isinstance(err, e.InvalidName):
        return OciError("NAME_INVALID", str(err))
    if isinstance(err, e.InvalidDigest):
        return OciError("DIGEST_INVALID", str(err), message="invalid digest")
    if isinstance(err, (e.UnknownRegistry, e.NameUnknown)):
        return OciError("NAME_UNKNOWN", str(err))
    if isinstance(err, e.ManifestUnknown):
        return OciError("MANIFEST_UNKNOWN", str(err))
    if isinstance(err, e.BlobUnknown):
        return OciError("BLOB_UNKNOWN", str(err))
    if isinstance(err, e.RangeNotSatisfiable):
        return OciError("RANGE_INVALID", str(err), headers={"Content-Range": f"bytes */{err.size}"})
    if isinstance(err, e.ManifestTooLarge):
        return OciError("MANIFEST_INVALID", str(err), message="manifest too large")
    if isinstance(err, e.UpstreamRateLimited):
        h = {"Retry-After": err.retry_after} if err.retry_after else {}
        return OciError("TOOMANYREQUESTS", str(err), headers=h)
    if isinstance(err, e.Unauthorized):
        return OciError("UNAUTHORIZED", str(err),
                        headers={"WWW-Authenticate": 'Basic realm="edgecache"'})
    if isinstance(err, e.Forbidden):
        return OciError("DENIED", str(err))
    if isinstance(err, e.UpstreamDenied):
        return OciError("DENIED", str(err), message="the upstream registry denied access")
    if isinstance(err, e.TooManyRequests):
        return OciError("TOOMANYREQUESTS", str(err), headers={"Retry-After": str(err.retry_after)})
    if isinstance(err, e.UpstreamDown):
        return OciError("UNKNOWN", str(err), status=503, message="upstream registry is down",
                        headers={"Retry-After": str(max(1, round(err.retry_in)))})
    if isinstance(err, e.BlobTooLarge):
        return OciError("UNKNOWN", str(err), status=502, message="blob larger than the cache")
    if isinstance(err, e.FillAbandoned):
        return OciError("UNKNOWN", str(err), status=503, message="fetch cancelled, try again",
                        headers={"Retry-After": "1"})
    if isinstance(err, (e.UpstreamError, e.DigestMismatch, e.SizeMismatch)):
        return OciError("UNKNOWN", str(err), status=503 if e.is_unavailable(err) else 502,
                        message="upstream registry failed")
    if isinstance(err, e.HopRefused):
        return OciError("UNKNOWN", str(err), status=409, message="not the fetcher of this blob")
    if isinstance(err, e.StoreFull):
        return OciError("UNKNOWN", str(err), status=507, message="cache disk is full")
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


def _http_error(exc: web.HTTPException) -> OciError:
    """aiohttp's own answers (no route, wrong method, body too large) in OCI terms."""
    if exc.status == 405:
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        return OciError("UNSUPPORTED", "method not supported by this mirror", headers=allow)
    if exc.status == 404:
        return OciError("NAME_UNKNOWN", "no such endpoint", message="not found")
    if exc.status == 413:
        return OciError("UNSUPPORTED", "request body too large", status=413)
    if exc.status == 401:
        return OciError("UNAUTHORIZED", exc.reason)
    if exc.status == 403:
        return OciError("DENIED", exc.reason)
    if exc.status == 429:
        return OciError("TOOMANYREQUESTS", exc.reason)
    return OciError("UNKNOWN", exc.reason, status=exc.status, message=exc.reason.lower())


class DenialLog:
    """One log line per client address per interval for refusals (401, 403, 429):
    a flood of wrong passwords must not become a flood of log lines."""

    INTERVAL = 10.0

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, int]] = {}     # address -> (last logged, held back)

    def __call__(self, request: web.Request, exc: BaseException, status: int) -> None:
        now = time.monotonic()
        who = request.remote or "?"
        last, held = self._seen.get(who, (0.0, 0))
        if now - last < self.INTERVAL:
            self._seen[who] = (last, held + 1)
            return
        if len(self._seen) > 4096:
            self._seen.clear()
        self._seen[who] = (now, 0)
        more = f" (and {held} more refusals in {now - last:.0f} s)" if held else ""
        log.warning("denied %s %s from %s: %d %s%s", request.method, request.path[:200], who,
                    status, exc, more)


# One per app (its middleware's memory of whom it logged), made in build_app.
DENIAL_LOG = web.AppKey("denial_log", DenialLog)


def new_request_id(request: web.Request) -> str:
    rid = request.get(REQUEST_ID)
    if rid is None:
        rid = request[REQUEST_ID] = f"{_PREFIX}-{next(_ids)}"
    return rid


@web.middleware
async def oci_error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Every error is an OCI JSON body; anything unexpected is a 500 UNKNOWN whose
    request id is in the body and on the log line with the traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise                     # redirects and the like are answers, not errors
        oci = _http_error(exc)
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as exc:
        # The client went away before its answer: nobody to tell, one line to log; the
        # access log says 499 (nginx's "client closed request"), aiohttp writes nothing.
        request[ERROR] = "client gone"
        log.info("%s %s: client gone before the answer (%s)", request.method,
                 request.path[:200], exc or type(exc).__name__)
        return web.Response(status=CLIENT_GONE)
    except Exception as exc:   # noqa: BLE001 - the translation boundary
        oci = to_oci(exc)
        if oci is None:
            rid = new_request_id(request)
            log.exception("%s %s -> 500 [%s]", request.method, request.path[:200], rid)
            oci = OciError("UNKNOWN", None, message="internal error")
        else:
            if oci.status in (401, 403, 429):
                request.app[DENIAL_LOG](request, exc, oci.status)
            elif oci.status >= 500:
                rid = new_request_id(request)
                log.warning("%s %s -> %d %s [%s]: %s", request.method, request.path[:200],
                            oci.status, oci.oci.code, rid, exc)
            if request.get(IDENTITY) is None:
                oci.detail = _public_detail(exc, oci)
    request[ERROR] = oci.oci.code
    return error_response(oci, request.get(REQUEST_ID))
