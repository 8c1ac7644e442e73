"""The hop marker and its authentication.

Every request one edgecache sends another carries `X-Edgecache-Hop: <node id>`.
A node never asks a sibling on behalf of a hop request, so content moves at most
one hop: no loops, no amplification.

With a shared secret the marker is signed: HMAC-SHA256 over the sender's and the
receiver's node ids, method, path with query, time and a random nonce. The
receiver accepts it only if it is the node named, the time is within WINDOW of
its own, and it has not seen the nonce before: a captured request can be neither
sent to another node nor sent again. The health check is a challenge: a sibling
proves it holds the secret by signing a random value we chose (otherwise any
host that answers like an edgecache would be admitted). Answers are content
addressed and checked by digest, except a tag's last known digest: that answer is
signed too, bound to the request's nonce.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Callable

HOP = "X-Edgecache-Hop"
AUTH = "X-Edgecache-Hop-Auth"
REPLY = "X-Edgecache-Hop-Reply"   # a signed tag answer (the one thing not checked by digest)
WINDOW = 60.0
PING_PATH = "/_edgecache/sibling"
MAX_REMEMBERED = 200_000       # nonces kept for WINDOW; beyond this, signed requests wait


def _mac(secret: bytes, *parts: str) -> str:
    return hmac.new(secret, "\n".join(parts).encode(), hashlib.sha256).hexdigest()


def sign(secret: bytes | None, sender: str, receiver: str | None, method: str, path_qs: str,
         now: float | None = None) -> dict[str, str]:
    """The headers of a hop request (signed when there is a secret). `receiver` is
    the node id of the sibling asked, None when not known yet (health checks only)."""
    headers = {HOP: sender}
    if secret:
        ts = str(int(time.time() if now is None else now))
        nonce = secrets.token_hex(12)
        to = receiver or ""
        mac = _mac(secret, sender, to, method.upper(), path_qs, ts, nonce)
        headers[AUTH] = f"{to}:{ts}:{nonce}:{mac}"
    return headers


def nonce_of(auth: str | None) -> str:
    """The nonce of a signed hop request ("" if unsigned)."""
    parts = (auth or "").split(":")
    return parts[2] if len(parts) == 4 else ""


def reply_mac(secret: bytes, responder: str, nonce: str, digest: str, checked: str,
              body: bytes) -> str:
    """What a sibling signs a tag answer with: bound to the request (its nonce), to who
    answers, and to what it says, so nobody between can answer in its name."""
    return _mac(secret, "reply", responder, nonce, digest, checked,
                hashlib.sha256(body).hexdigest())


def proof(secret: bytes, node_id: str, challenge: str) -> str:
    """What a sibling answers a health check's challenge with."""
    return _mac(secret, "proof", node_id, challenge)


class HopVerifier:
    """Checks signed hop requests for one node, remembering nonces to refuse replays."""

    def __init__(self, secret: bytes, node_id: str, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.secret = secret
        self.node_id = node_id
        self.clock = clock
        self._seen: dict[str, float] = {}

    def verify(self, sender: str, auth: str | None, method: str, path_qs: str) -> str | None:
        """None when the hop request is authentic, else why not."""
        if not auth:
            return "hop request without a signature"
        try:
            to, ts_s, nonce, mac = auth.split(":")
            ts = int(ts_s)
        except ValueError:
            return "malformed hop signature"
        if to != self.node_id and not (to == "" and path_qs.split("?")[0] == PING_PATH):
            return f"hop request signed for {to or 'no one'!r}, not for this node"
        now = self.clock()
        if abs(now - ts) > WINDOW:
            return f"hop signature is {int(now - ts)} s off (clock skew or replay)"
        if not hmac.compare_digest(mac, _mac(self.secret, sender, to, method.upper(), path_qs,
                                             ts_s, nonce)):
            return "wrong hop signature"
        self._forget(now)
        if nonce in self._seen:
            return "replayed hop request"
        if len(self._seen) >= MAX_REMEMBERED:
            return "too many hop requests in the last minute"
        self._seen[nonce] = now + 2 * WINDOW
        return None

    def _forget(self, now: float) -> None:
        # Insertion order is expiry order (the expiry is now + a constant).
        while self._seen:
            nonce, expiry = next(iter(self._seen.items()))
            if expiry > now:
                break
            del self._seen[nonce]
