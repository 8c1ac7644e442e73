"""Access control at the door: the client's network, who it is (Basic, bearer
token, client certificate, a signed sibling), and the TLS context of the listener."""
from __future__ import annotations

import logging
import ssl

from aiohttp import web

from edgecache.access import Access, Identity
from edgecache.config import ListenerTLS
from edgecache.errors import Forbidden, Unauthorized
from edgecache.siblings import hopauth
from edgecache.siblings import server as siblings_server

log = logging.getLogger("edgecache.access")

ACCESS = web.AppKey("access", Access)
HOPS = web.AppKey("hops", hopauth.HopVerifier)   # set when siblings share a secret
IDENTITY = web.RequestKey("ec_identity", object)
# Liveness and the siblings' check say nothing of what is cached: open to every client.
OPEN_PATHS = frozenset({"/_edgecache/health", hopauth.PING_PATH})
HOP_FROM = web.RequestKey("ec_hop_from", str)     # the sibling's node id on a hop request


def _cert_subject(request: web.Request) -> str | None:
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return None          # no certificate, or one the CA did not verify
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return "client-certificate"


def identity(request: web.Request) -> Identity | None:
    try:
        return request[IDENTITY]          # set by admit() (on the hot path: no .get())
    except KeyError:
        return None


def hop_from(request: web.Request) -> str | None:
    """The node id of the sibling that sent this request, if one did."""
    try:
        return request[HOP_FROM]
    except KeyError:
        return None


# What a route's door asks beyond the network and who the client is (endpoint.py).
PULL = "pull"             # the registry API: the upstream's own rules, in the handler
OPEN = "open"             # liveness, the siblings' check
OPERATOR = "operator"     # status, metrics: operators (when anything is guarded)
ADMIN = "admin"           # POST gc, verify, sync, import, export
BY_PATH = "by path"       # a path no route has: as its place (/_edgecache/, /metrics) says


async def admit(request: web.Request, door: str = BY_PATH) -> None:
    """Who the client is and whether it may ask this (server/endpoint.py, before the
    handler); raises Unauthorized or Forbidden."""
    try:
        access = request.app[ACCESS]
    except KeyError:                         # before the runtime is up
        return
    headers = request.headers
    hop = request[HOP_FROM] = headers.get(hopauth.HOP)
    if hop is not None:
        try:
            sibling = siblings_server.admit(request, hop, request.app.get(HOPS))
        except (Unauthorized, Forbidden):
            access.denied += 1
            raise
        if sibling is not None:
            # Siblings share a secret: a signed hop request is another copy of this
            # cache, served whatever its network, private upstreams included; for pulls.
            request[IDENTITY] = sibling
            return
        # No secret: an ordinary client, for every check below.
    cert = _connection_checked(request, access)
    authorization = headers.get("Authorization")
    # Anonymous (most requests): identify() would say None, one coroutine later.
    who = await access.identify(authorization, cert, request.remote) if authorization or cert else None
    request[IDENTITY] = who
    if door in (PULL, OPEN):
        return
    if door == BY_PATH:
        path = request.path
        if not (path.startswith("/_edgecache/") or path == "/metrics"):
            return
        if request.method == "POST":
            door = ADMIN          # even on an open path: who may not POST learns nothing more
        elif path in OPEN_PATHS:
            return
        else:
            door = OPERATOR
    if door == ADMIN:
        access.check_admin(who)
    else:
        access.check_operator(who)


def _connection_checked(request: web.Request, access: Access) -> str | None:
    """The network check and the client certificate's subject: once per connection
    (and again after a reload changed the rules), not once per request."""
    conn = request.protocol
    known = getattr(conn, "door", None)
    if known is not None and known[0] == access.generation:
        return known[1]
    access.check_network(request.remote)
    cert = _cert_subject(request)
    if hasattr(conn, "door"):
        conn.door = (access.generation, cert)
    return cert


def listener_ssl_context(tls: ListenerTLS) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # A connection's certificate is checked once (_connection_checked): never another
    # one on the same connection.
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.client_ca_file is not None:
        ctx.load_verify_locations(str(tls.client_ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return ctx
