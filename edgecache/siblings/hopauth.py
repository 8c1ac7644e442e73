"""The hop marker and its authentication.

Every request one edgecache sends another carries `X-Edgecache-Hop: <node id>`.
A node never asks a sibling on behalf of a hop request, so content moves at most
one hop: no loops, no amplification. With a shared secret the marker is signed:
HMAC-SHA256 over node id, method, path with query, and the time, accepted within
a short window either side (clocks on a branch LAN are close, and a captured
request is only good for that long).
"""
from __future__ import annotations

import hashlib
import hmac
import time

HOP = "X-Edgecache-Hop"
AUTH = "X-Edgecache-Hop-Auth"
WINDOW = 60.0


def _mac(secret: bytes, node_id: str, method: str, path_qs: str, ts: int) -> str:
    msg = f"{node_id}\n{method.upper()}\n{path_qs}\n{ts}".encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def sign(secret: bytes | None, node_id: str, method: str, path_qs: str,
         now: float | None = None) -> dict[str, str]:
    """The headers of a hop request (signed when there is a secret)."""
    headers = {HOP: node_id}
    if secret:
        ts = int(time.time() if now is None else now)
        headers[AUTH] = f"{ts}:{_mac(secret, node_id, method, path_qs, ts)}"
    return headers


def verify(secret: bytes, node_id: str, auth: str | None, method: str, path_qs: str,
           now: float | None = None) -> str | None:
    """None when the hop request is authentic, else why not."""
    if not auth:
        return "hop request without a signature"
    ts_s, _, mac = auth.partition(":")
    try:
        ts = int(ts_s)
    except ValueError:
        return "malformed hop signature"
    now = time.time() if now is None else now
    if abs(now - ts) > WINDOW:
        return f"hop signature is {int(now - ts)} s off (clock skew or replay)"
    if not hmac.compare_digest(mac, _mac(secret, node_id, method, path_qs, ts)):
        return "wrong hop signature"
    return None
