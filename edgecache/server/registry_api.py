"""The /v2 pull API (OCI distribution-spec v1.1, pull side).

Handlers parse and validate the request, ask the pull services, and shape the
response. They raise domain errors; oci_errors.py turns them into OCI bodies.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, TypeVar

from aiohttp import web

from edgecache.server.accesslog import OUTCOME
from edgecache.server.endpoint import endpoint

from edgecache.access import Access
from edgecache.config import Config
from edgecache.errors import (BlobUnknown, ManifestUnknown, NoSuchEndpoint, Unauthorized,
                              UnknownRegistry, Unsupported)
from edgecache.artifacts import index_of
from edgecache.mediatypes import OCI_INDEX, Accept
from edgecache.pull.blobs import BlobService, LocalBlob
from edgecache.pull.fill import Fill
from edgecache.pull.manifests import ManifestAnswer, ManifestService
from edgecache.pull.routing import Route, Router
from edgecache.policy.rules import Policy
from edgecache.pull.referrers import ReferrersService, page as referrers_page
from edgecache.pull.tags import TagListService
from edgecache.reference import is_digest, parse_digest
from edgecache.server.blob_response import BlobSender, ClientGone, StreamAborted
from edgecache.server.guard import hop_from, identity
from edgecache.siblings import server as siblings_server
from edgecache.siblings.service import Siblings
from edgecache.server.oci_errors import API_VERSION
from edgecache.server.protocol import client_lost
from edgecache.server.ranges import parse_range
from edgecache.server.whole_answer import WholeAnswer
from edgecache.store.blobs import BlobStore
from edgecache.metrics import Metrics
from edgecache.seed.importer import Importer
from edgecache.sync.syncer import Syncer



@dataclass
class Services:
    """What the handlers need; built and owned by app.py."""

    config: Config
    store: BlobStore
    blobs: BlobService
    manifests: ManifestService
    tags: TagListService
    referrers: ReferrersService
    policy: Policy
    sender: BlobSender
    metrics: Metrics
    syncer: Syncer
    access: Access
    importer: Importer
    # The upstreams the process runs with (a reload that adds or removes one needs a
    # restart: it says so), not the last config read.
    router: Router
    siblings: Siblings | None = None


SERVICES: web.AppKey[Services] = web.AppKey("services", Services)
T = TypeVar("T")


def _route(request: web.Request, svc: Services) -> Route:
    route = svc.router(request.match_info["name"], request.query.get("ns"))
    svc.access.check_upstream(route.upstream, identity(request))
    return route


def _hop_route(request: web.Request, svc: Services) -> Route | None:
    """A sibling's route; None when a signed sibling names an upstream this node does
    not have (then nothing is given: content belongs to the route it came through).
    Anyone else is routed, and checked, like every client."""
    try:
        return _route(request, svc)
    except UnknownRegistry:
        who = identity(request)
        if who is None or who.method != "sibling":
            raise
        return None


def _served(request: web.Request, svc: Services, source: str, nbytes: int) -> None:
    o = request[OUTCOME]
    o.source = source
    o.bytes = nbytes
    svc.metrics.served(source, nbytes)
    node = hop_from(request)
    if node is not None and svc.siblings is not None:
        svc.siblings.served_to(node, nbytes)


async def base(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    if identity(request) is None and svc.access.any_credentials:
        # Clients learn the auth scheme from this ping (skopeo, Docker): challenge the
        # anonymous ones. Without credentials they go on anonymously, to public upstreams.
        raise Unauthorized("this mirror takes credentials")
    return web.json_response({}, headers=API_VERSION)


async def manifest(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    accept = Accept.parse(request.headers.getall("Accept", ()))
    reference = request.match_info["reference"]
    hop = hop_from(request)
    if hop is None:
        route = _route(request, svc)
        ans = svc.manifests.held(route, reference, accept) or \
            await svc.manifests.get(route, reference, accept)
        headers = {}
    else:
        route, ans, headers = await _manifest_for_sibling(request, svc, reference, accept)
    if svc.policy.active and not _signed_sibling(request):
        # Every answer, a hop's too: without a shared secret a "sibling" may be anyone.
        # A signed sibling applies its own policy to its own clients.
        assert route is not None
        if not svc.policy.cleared(route, ans.digest):
            await svc.policy.check(route, ans.digest, ans.body)
    headers.update({"Docker-Distribution-API-Version": "registry/2.0",
                    "Docker-Content-Digest": ans.digest, "X-Edgecache-Source": ans.source,
                    "Content-Type": ans.media_type})
    if ans.stale:
        headers["X-Edgecache-Stale"] = "true"
        headers["Warning"] = '110 edgecache "Response is Stale"'
        request[OUTCOME].stale = True
    # Made before it is counted: headers it cannot send are an error, not an answer.
    resp = WholeAnswer(ans.body, headers, keep=hop is None)
    _served(request, svc, ans.source, 0 if request.method == "HEAD" else len(ans.body))
    return resp


async def _manifest_for_sibling(request: web.Request, svc: Services, reference: str,
                                accept: Accept) -> tuple[Route | None, ManifestAnswer, dict[str, str]]:
    """A sibling asks: by digest, only what we hold (a probe, HEAD) or can get from the
    upstream (GET); by tag, only our own last known answer (it asks when its upstream is
    unreachable). Never passed on to another sibling."""
    route = _hop_route(request, svc)
    headers: dict[str, str] = {}
    if not is_digest(reference):
        if route is None:
            raise ManifestUnknown(f"{reference}: no such upstream here")
        ans, checked = await svc.manifests.last_known(route, reference, accept)
        headers.update(siblings_server.last_known_headers(svc.siblings, request, ans.digest,
                                                          ans.body, checked))
    elif route is None:
        raise ManifestUnknown(f"{reference}: no such upstream here")
    elif request.method == "HEAD":
        found = await svc.manifests.local(route, reference)
        if found is None or not accept.accepts(found.media_type):
            raise ManifestUnknown(f"{reference} is not held here")
        ans = found
        headers.update(siblings_server.probe_headers("stored"))
    else:
        ans = await svc.manifests.get(route, reference, accept, hop=True)
    return route, ans, headers


def _signed_sibling(request: web.Request) -> bool:
    who = identity(request)
    return who is not None and who.method == "sibling"


async def blob(request: web.Request) -> web.StreamResponse:
    svc = request.app[SERVICES]
    hop = hop_from(request) is not None
    route = _hop_route(request, svc) if hop else _route(request, svc)
    digest = parse_digest(request.match_info["digest"])
    headers = {**API_VERSION, "Docker-Content-Digest": str(digest), "Accept-Ranges": "bytes",
               "Content-Type": "application/octet-stream"}
    if request.method == "HEAD":
        if hop:
            # A sibling's probe: only what we hold or are getting from the upstream,
            # for that route.
            held = svc.blobs.held(route, digest) if route is not None else None
            if held is None:
                raise BlobUnknown(f"{digest} is not held here")
            how, size = held
            headers.update(siblings_server.probe_headers(how))
        else:
            assert route is not None
            size = await svc.blobs.head(route, digest)
        resp = web.StreamResponse(headers=headers)
        if size is not None:
            resp.content_length = size
        request[OUTCOME].source = "local" if svc.store.has(digest) else "upstream"
        return resp

    target = await _blob_target(svc, route, digest, hop)
    if isinstance(target, LocalBlob):
        with svc.store.lease(digest):
            resp, start, end = _range_response(request, headers, target.size)
            try:
                n = await svc.sender.send_file(request, resp, str(target.path), start, end - start)
            except FileNotFoundError:
                # Gone from disk behind our back (deleted by hand): forget it, fetch again.
                await svc.store.delete(digest)
                target = await _blob_target(svc, route, digest, hop)
            except (ClientGone, StreamAborted) as e:
                request[OUTCOME].error = str(e)
                return resp
            else:
                _served(request, svc, "local", n)
                return resp
        if isinstance(target, LocalBlob):
            raise BlobUnknown(str(digest))

    size = target.size
    if size is None or size == 0:
        # Unknown length (a chunked upstream): answer once the whole blob is verified,
        # with an exact Content-Length and Range, like any cached blob. Empty: there is
        # no last byte to hold back, so the headers themselves wait for verification.
        size = await _unless_gone(request, target.wait_verified())
    resp, start, end = _range_response(request, headers, size)
    source = target.source_kind or "upstream"
    request[OUTCOME].source = source
    # A fill held back until verified (a sibling's) sends nothing for a while: a client
    # gone meanwhile must stop waiting, or the fill never learns nobody wants it.
    await _unless_gone(request, target.wait_sendable())
    try:
        n = await svc.sender.send_fill(request, resp, target, start, end)
    except (ClientGone, StreamAborted) as e:
        request[OUTCOME].error = str(e)
        return resp
    _served(request, svc, source, n)
    return resp


async def _unless_gone(request: web.Request, aw: Awaitable[T]) -> T:
    """aw, unless the client goes away first (then ClientGone, and aw is cancelled).
    For waits that write nothing: a response is written by the handler's own task."""
    lost = client_lost(request)
    if lost is None:
        return await aw
    task = asyncio.ensure_future(aw)
    stopped = False
    try:
        await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:                    # the client gone, or this handler cancelled: the wait too
        if not task.done():
            stopped = True
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if stopped:
        raise ClientGone("the client went away while its answer was waited for")
    return task.result()


async def _blob_target(svc: Services, route: Route | None, digest, hop: bool) -> LocalBlob | Fill:
    if route is None:             # a sibling's upstream we do not have
        raise BlobUnknown(f"{digest}: no such upstream here")
    return await svc.blobs.get(route, digest, hop=hop)


def _range_response(request: web.Request, headers: dict[str, str],
                    size: int) -> tuple[web.StreamResponse, int, int]:
    rng = parse_range(request.headers.get("Range"), size)
    if rng is None:
        resp = web.StreamResponse(headers=headers)
        resp.content_length = size
        return resp, 0, size
    start, end = rng
    resp = web.StreamResponse(status=206, headers={
        **headers, "Content-Range": f"bytes {start}-{end - 1}/{size}"})
    resp.content_length = end - start
    return resp, start, end


async def tags_list(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    route = _route(request, svc)
    body, source, next_query = await svc.tags.get(route, request.query)
    _served(request, svc, source, len(body))
    headers = dict(API_VERSION)
    if next_query is not None:
        # The next page through this mirror, the same route (never the upstream's URL).
        ns = request.query.get("ns")
        url = request.rel_url.with_query({**next_query, **({"ns": ns} if ns else {})})
        headers["Link"] = f'<{url}>; rel="next"'
    return web.Response(body=body, content_type="application/json", headers=headers)


async def referrers(request: web.Request) -> web.Response:
    """GET /v2/<name>/referrers/<digest>[?artifactType=...]: an image index of the
    manifests that name the digest as their subject (pull/referrers.py)."""
    svc = request.app[SERVICES]
    route = _route(request, svc)
    subject = parse_digest(request.match_info["digest"])
    ans = await svc.referrers.get(route, subject)
    last = request.query.get("last")
    chosen, filtered, more = referrers_page(ans.descriptors, request.query.getall("artifactType", []),
                                            _count(request.query.get("n")), last)
    body = index_of(chosen)
    headers = {**API_VERSION, "X-Edgecache-Source": ans.source}
    if filtered:
        headers["OCI-Filters-Applied"] = "artifactType"
    if more and chosen:
        # The next page through this mirror, the same route and filter.
        headers["Link"] = f'<{request.rel_url.update_query(last=chosen[-1]["digest"])}>; rel="next"'
    if ans.stale:
        headers["X-Edgecache-Stale"] = "true"
        headers["Warning"] = '110 edgecache "Response is Stale"'
        request[OUTCOME].stale = True
    _served(request, svc, ans.source, len(body))
    resp = web.Response(body=body, headers=headers)
    resp.content_type = OCI_INDEX
    return resp


def _count(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() and len(value) < 7 else None


async def unsupported(request: web.Request) -> web.Response:
    if request.method in ("GET", "HEAD"):
        raise NoSuchEndpoint(f"no such endpoint: {request.path[:200]}")
    raise Unsupported(f"{request.method} is not supported: this is a pull-only mirror",
                      allow="GET, HEAD")


def add_routes(app: web.Application) -> None:
    name = r"{name:[^{}]+?}"
    for path, handler in (("/v2", base), ("/v2/", base),
                          (rf"/v2/{name}/manifests/{{reference:[^/]+}}", manifest),
                          (rf"/v2/{name}/blobs/{{digest:[^/]+}}", blob)):
        app.router.add_route("GET", path, endpoint(handler))
        app.router.add_route("HEAD", path, endpoint(handler))
    app.router.add_route("GET", rf"/v2/{name}/tags/list", endpoint(tags_list))
    app.router.add_route("GET", rf"/v2/{name}/referrers/{{digest:[^/]+}}", endpoint(referrers))
    app.router.add_route("*", "/v2/{tail:.*}", endpoint(unsupported))
