"""Which route may have which content.

A digest held here is answered through a route (upstream, repository) only when
it is linked to it (store/links.py). Links are made as content arrives: the
upstream served it for that repository, a verified manifest fetched for it names
it, a signed sibling served it for that route, or the sync fetched it. A digest
held but not linked is confirmed with the upstream: one HEAD for that repository
with that upstream's credentials, shared by every concurrent asker; a yes links
it (no body crosses the WAN), a no is remembered for a little while, so a client
asking again and again costs the upstream nothing more.

A HEAD is only a claim. It is taken where a lie would give nothing away: through
a private route (its clients may use every private upstream anyway), or for a
digest already linked to a public upstream or to the route's own upstream. Held
only under private upstreams and asked through a public one, a blob must be
proved: that upstream sends two 64 KiB windows of it (bounded Range GETs), at an
offset only this process knows and at the end, which must equal our copy there;
a registry that ignores Range sends the whole body, which must hash to the
digest. A manifest is fetched whole (it is small). A public upstream
that lies, or one a LAN attacker impersonates over plain http, learns nothing and
unlocks nothing.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import Counter, OrderedDict
from typing import Awaitable, Callable

from edgecache.errors import UpstreamBadResponse, UpstreamDenied, UpstreamError, UpstreamNotFound
from edgecache.jsondoc import document
from edgecache.mediatypes import PREFERENCE
from edgecache.pull.routing import Route
from edgecache.singleflight import SingleFlight
from edgecache.store.links import Owner
from edgecache.upstream.client import UpstreamClient, Upstreams

NEGATIVE_TTL = 10.0          # seconds a "no" from the upstream is remembered
NEGATIVE_MAX = 4096          # ... for at most this many (route, digest) pairs
PROOF_BYTES = 64 * 1024      # each window an upstream sends to prove it has a blob
# Every manifest type we know, and anything else: a HEAD by digest must not be
# refused for its Accept list.
_ACCEPT_ALL = [*PREFERENCE, "*/*"]


def owner(route: Route) -> Owner:
    return route.upstream, route.repo


def children(body: bytes) -> list[str]:
    """The digests a manifest names: an index its manifests, a manifest its config and
    layers, a schema 1 manifest its layers. Nothing for what does not parse. Not its
    `subject`: a referrer may name any manifest as its subject, in any repository."""
    doc = document(body)
    if doc is None:
        return []
    found: list[str] = []

    def take(desc: object) -> None:
        if isinstance(desc, dict) and isinstance(desc.get("digest"), str):
            found.append(desc["digest"])

    for key in ("manifests", "layers", "blobs"):
        items = doc.get(key)
        if isinstance(items, list):
            for d in items:
                take(d)
    take(doc.get("config"))
    layers = doc.get("fsLayers")
    if isinstance(layers, list):
        found += [x["blobSum"] for x in layers
                  if isinstance(x, dict) and isinstance(x.get("blobSum"), str)]
    return list(dict.fromkeys(found))


class Confirmer:
    """Asks an upstream whether a repository has a digest we hold under another route."""

    def __init__(self, upstreams: Upstreams, public: Callable[[str], bool] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.upstreams = upstreams
        # Which upstreams are public now (access decides, and a reload may change it).
        self._public = public or (lambda u: u in upstreams.clients and
                                  upstreams.clients[u].cfg.public)
        self.clock = clock
        self._flight = SingleFlight()
        self._key = secrets.token_bytes(32)      # where proofs look (see windows)
        self._no: OrderedDict[tuple[Route, str, str], float] = OrderedDict()
        # Questions asked, by (upstream, "yes" | "no" | "unanswered"): for /metrics.
        self.results: Counter[tuple[str, str]] = Counter()

    def may_vouch(self, route: Route, owners: frozenset[Owner]) -> bool:
        """Whether the route's upstream's HEAD is enough to link a held digest with
        these owners to the route (see above)."""
        if not self._public(route.upstream):
            return True
        return any(u == route.upstream or self._public(u) for u, _ in owners)

    async def confirm(self, route: Route, kind: str, digest: str) -> bool:
        """True when the upstream has `digest` as a blob or manifest (`kind`) of the
        route's repository; False when it says no, or cannot be asked."""
        return await self._answer(route, kind, digest,
                                  lambda c: self._head(c, route, kind, digest)) == "yes"

    async def prove(self, route: Route, digest: str, size: int,
                    ours: Callable[[int, int], Awaitable[bytes]]) -> str:
        """"yes" when the route's upstream sends the same bytes as our copy in the
        windows asked, "no" when it cannot (not found, other bytes), "unanswered" when it
        cannot be asked now. `ours(offset, n)` reads our copy."""
        if size == 0:       # the empty blob: nothing to prove, a HEAD says it all
            return await self._answer(route, "proof", digest,
                                      lambda c: self._head(c, route, "blobs", digest))
        return await self._answer(route, "proof", digest,
                                  lambda c: self._windows_match(c, route, digest, size, ours))

    async def _answer(self, route: Route, kind: str, digest: str,
                      ask: Callable[[UpstreamClient], Awaitable[str]]) -> str:
        """One question at a time per (route, kind, digest), shared by every asker; a
        "no" remembered for NEGATIVE_TTL; every answer counted."""
        key = (route, kind, digest)
        until = self._no.get(key)
        if until is not None:
            if until > self.clock():
                return "no"
            del self._no[key]

        async def asked() -> str:
            client = self.upstreams.clients.get(route.upstream)
            answer = "no" if client is None else await ask(client)
            self.results[(route.upstream, answer)] += 1
            if answer == "no":
                self._no[key] = self.clock() + NEGATIVE_TTL
                while len(self._no) > NEGATIVE_MAX:
                    self._no.popitem(last=False)
            return answer
        return await self._flight.do(key, asked)

    def windows(self, digest: str, size: int) -> list[tuple[int, int]]:
        """Where a proof looks: one window at an offset only this process knows (the
        same for every try, so asking again and again wins nothing) and the last one (a
        gzip layer's trailer depends on all of it); the whole of a small blob."""
        n = min(size, PROOF_BYTES)
        if size <= 2 * PROOF_BYTES:
            return [(0, size)] if size <= PROOF_BYTES else [(0, n), (size - n, n)]
        mac = hmac.new(self._key, digest.encode(), hashlib.sha256).digest()
        at = int.from_bytes(mac[:8], "big") % (size - 2 * n + 1)
        return [(at, n), (size - n, n)]

    async def _windows_match(self, client: UpstreamClient, route: Route, digest: str, size: int,
                             ours: Callable[[int, int], Awaitable[bytes]]) -> str:
        try:
            for at, n in self.windows(digest, size):
                theirs = await client.blob_window(route.repo, digest, at, n, size)
                if isinstance(theirs, bool):
                    # The registry ignores Range: its whole body came, and was hashed.
                    return "yes" if theirs else "no"
                if theirs != await ours(at, n):
                    return "no"
        except (UpstreamNotFound, UpstreamDenied, UpstreamBadResponse):
            return "no"              # not there, not for us, or an answer that proves nothing
        except (UpstreamError, OSError):
            return "unanswered"      # cannot be asked now, or our copy went away meanwhile
        return "yes"

    @staticmethod
    async def _head(client: UpstreamClient, route: Route, kind: str, digest: str) -> str:
        try:
            if kind == "blobs":
                await client.head_blob(route.repo, digest)
            else:
                head = await client.head_manifest(route.repo, digest, _ACCEPT_ALL)
                if head.digest and head.digest != digest:
                    return "no"
        except (UpstreamNotFound, UpstreamDenied):
            return "no"
        except UpstreamError:
            # Unreachable, timed out, failing: no answer now (the breaker makes the
            # next one quick); not remembered, so the link is made once it is back.
            return "unanswered"
        return "yes"
