"""The OCI error table (code, HTTP status, message) and the middleware that
turns domain errors into OCI error bodies. Handlers raise domain errors only."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from aiohttp import web

from edgecache.server.accesslog import ERROR

from edgecache import errors as e

log = logging.getLogger("edgecache.server")


@dataclass(frozen=True)
class OciCode:
    code: str
    status: int
    message: str


# distribution-spec "Error Codes", plus Distribution's UNAVAILABLE and TOOMANYREQUESTS.
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
    OciCode("UNAVAILABLE", 503, "service unavailable"),
    OciCode("RANGE_INVALID", 416, "requested range not satisfiable"),
)}


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
    if isinstance(err, e.UpstreamDown):
        return OciError("UNAVAILABLE", str(err), message="upstream registry is down",
                        headers={"Retry-After": "5"})
    if isinstance(err, (e.UpstreamError, e.DigestMismatch, e.SizeMismatch)):
        return OciError("UNAVAILABLE", str(err), status=502 if not e.is_unavailable(err) else 503,
                        message="upstream registry failed")
    if isinstance(err, e.HopRefused):
        return OciError("UNAVAILABLE", str(err), status=409, message="not the fetcher of this blob")
    if isinstance(err, e.StoreFull):
        return OciError("UNAVAILABLE", str(err), status=507, message="cache disk is full")
    return None


def error_response(err: OciError, method: str) -> web.Response:
    body = b"" if method == "HEAD" else json.dumps({"errors": [
        {"code": err.oci.code, "message": err.message, "detail": err.detail}]}).encode()
    resp = web.Response(status=err.status, body=body, content_type="application/json",
                        headers=err.headers)
    return resp


@web.middleware
async def oci_error_middleware(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if not request.path.startswith("/v2"):
            raise
        if exc.status == 405:
            return error_response(OciError("UNSUPPORTED", f"{request.method} is not supported by this mirror"), request.method)
        if exc.status == 404:
            return error_response(OciError("NAME_UNKNOWN", "no such endpoint", message="not found"), request.method)
        raise
    except Exception as exc:   # noqa: BLE001 - the translation boundary
        oci = to_oci(exc)
        if oci is None:
            raise
        request[ERROR] = oci.oci.code
        if oci.status in (401, 403):
            log.warning("denied %s %s from %s: %s", request.method, request.path[:200],
                        request.remote, exc)
        elif oci.status >= 500:
            log.warning("%s %s -> %d %s: %s", request.method, request.path, oci.status,
                        oci.oci.code, exc)
        return error_response(oci, request.method)
