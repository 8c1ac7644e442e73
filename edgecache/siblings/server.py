"""The sibling protocol's server half: what this node answers another edgecache.

- `admit`: a request marked as a hop (`X-Edgecache-Hop`), checked at the door. With a
  shared secret its signature is verified (siblings/hopauth.py) and it is served as
  another copy of this cache, for pulls only; without one it is an ordinary client.
- `ping`: the health check's answer (who answers here, and a proof of the secret
  for a signed check).
- `last_known_headers` and `probe_headers`: the headers of a hop's tag answer (when
  it was last confirmed, signed with the request's nonce) and of a probe (how this
  node holds a blob or manifest).

The registry handlers (server/registry_api.py) decide what a hop gets; the headers
and checks of the protocol are here, next to its client half (siblings/client.py).
"""
from __future__ import annotations

import re

from aiohttp import web

from edgecache import __version__
from edgecache.access import Identity
from edgecache.errors import Forbidden, NoSuchEndpoint, StoreUnhealthy, Unauthorized
from edgecache.siblings import hopauth
from edgecache.siblings.client import CHECKED, HAVE
from edgecache.siblings.service import Siblings

NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,63}")
STALE = "X-Edgecache-Stale"


def admit(request: web.Request, hop: str,
          verifier: hopauth.HopVerifier | None) -> Identity | None:
    """A hop request's identity: the signed sibling's, or None when siblings share no
    secret (then it is checked like any client). Raises when it may not be served."""
    if not NODE_ID.fullmatch(hop):
        raise Unauthorized("malformed hop marker")
    if verifier is None:
        return None
    why = verifier.verify(hop, request.headers.get(hopauth.AUTH), request.method,
                          request.raw_path)
    if why is not None:
        raise Unauthorized(f"sibling {hop}: {why}")
    if request.method not in ("GET", "HEAD") or not (
            request.path.startswith("/v2/") or request.path == hopauth.PING_PATH):
        raise Forbidden("siblings may only pull")
    return Identity(hop, "sibling")


def ping(siblings: Siblings | None, store_healthy: bool, who: Identity | None,
         challenge: str) -> dict[str, str]:
    """Who answers here: siblings check it (our own checks, not mDNS, say who is up)."""
    if siblings is None:
        raise NoSuchEndpoint("siblings are not enabled on this node")
    if not store_healthy:
        raise StoreUnhealthy("the store is not healthy")
    doc = {"node_id": siblings.node_id, "version": __version__}
    # Proofs only for signed hop requests: else anyone could have us answer a challenge
    # that a sibling put to them, and pass for us.
    if siblings.cfg.secret and challenge and who is not None and who.method == "sibling":
        doc["proof"] = hopauth.proof(siblings.cfg.secret, siblings.node_id, challenge[:64])
    return doc


def last_known_headers(siblings: Siblings | None, request: web.Request, digest: str,
                       body: bytes, checked: float) -> dict[str, str]:
    """A hop's tag answer: our last known one, when it was confirmed, marked stale and
    (with a secret) signed for this request, the one answer not checked by digest."""
    headers = {CHECKED: f"{checked:.3f}", STALE: "true"}
    if siblings is not None and siblings.cfg.secret:
        headers[hopauth.REPLY] = hopauth.reply_mac(
            siblings.cfg.secret, siblings.node_id,
            hopauth.nonce_of(request.headers.get(hopauth.AUTH)), digest, headers[CHECKED], body)
    return headers


def probe_headers(how: str) -> dict[str, str]:
    """A hop's probe answer: how this node holds it (stored, or filling)."""
    return {HAVE: how}
