"""Siblings: the peer table, its health checks, discovery, and the miss policy.

On a miss for content addressed by digest (never for a tag while the upstream
answers), a node asks its live siblings, in parallel and briefly, whether they
hold it. One that has it stored (or is getting it from the upstream right now)
serves it. Otherwise rendezvous hashing of the digest over the live nodes names
the one that fetches it from the WAN; the others stream from that one. N nodes
missing the same blob together thus cause one WAN fetch. Whatever goes wrong
with a sibling costs a bounded delay (two attempts at most, each bounded in time
and rate), then the node goes to the upstream itself.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable, Iterable

from edgecache.atomic import write_text_atomic
from edgecache.config import Config
from edgecache.errors import DigestMismatch, SiblingError, SizeMismatch
from edgecache.metrics import gauge, labelled_counter
from edgecache.pull.fill import Source, SourceFactory, SourceKind
from edgecache.pull.routing import Route
from edgecache.reference import Digest, digest_of
from edgecache.siblings.client import SiblingClient, TagAnswer
from edgecache.siblings.hopauth import HopVerifier
from edgecache.siblings.peers import Peer, PeerTable, rendezvous
from edgecache.store import layout

log = logging.getLogger("edgecache.siblings")

MAX_ATTEMPTS = 2                 # siblings tried per miss before the upstream
OWNER_WAIT_FACTOR = 5            # a sibling fetching from the upstream answers when it does
WAN_RATE_DIVISOR = 16            # ... and sends at the WAN's pace: min_rate / 16
NOBODY_WARNING_CHECKS = 6        # mDNS found no one in this many check intervals: say so
NOBODY_WARNING_EVERY = 600.0


@dataclass(frozen=True)
class Attempt:
    wait: float                  # for the connection and the response headers
    min_rate: int                # bytes/s, after read_timeout


def load_node_id(data_dir: Path, configured: str | None) -> str:
    """The configured id, else the one made at first start and kept in data_dir."""
    if configured:
        return configured
    path = layout.node_id_path(data_dir)
    try:
        node_id = path.read_text().strip()
        if node_id:
            return node_id
    except FileNotFoundError:
        pass
    host = re.sub(r"[^A-Za-z0-9-]", "-", os.uname().nodename.split(".")[0])[:30] or "node"
    node_id = f"{host}-{uuid.uuid4().hex[:8]}"
    write_text_atomic(path, node_id + "\n")
    return node_id


class Siblings:
    def __init__(self, cfg: Config, node_id: str) -> None:
        s = cfg.siblings
        self.cfg = s
        self.node_id = node_id
        self.table = PeerTable(node_id, fail_after=s.fail_after, readmit_after=s.readmit_after,
                               bad_for=s.bad_for)
        self.table.on_change = self._peer_changed
        self.client = SiblingClient(node_id, s.secret, timeout=s.timeout, read_timeout=s.read_timeout,
                                    tls=s.tls)
        scheme = "https" if cfg.tls else "http"
        if s.mdns:          # zeroconf (3 MiB resident) only where mDNS is on
            from edgecache.siblings.discovery import Discovery
        self.discovery = Discovery(node_id, cfg.listen_port, s.interfaces, cfg.listen_host, scheme,
                                   on_found=self._found, on_gone=self._gone) if s.mdns else None
        self.verifier = HopVerifier(s.secret, node_id) if s.secret else None
        self._wake = asyncio.Event()
        self._health: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self.verifier is None:
            log.warning("siblings without siblings.secret_file: any host on the LAN can pose as "
                        "a sibling, and hop requests are checked like any client's")
        await self.client.start()
        for url in self.cfg.peers:
            self.table.add(url, "static")
        if self.discovery is not None:
            try:
                await self.discovery.start()
            except Exception as e:   # noqa: BLE001 - zeroconf has more than its own errors
                # No multicast here (a container without it, no IPv4 address), or a
                # clash: the cache runs on, with static peers only.
                log.error("mDNS could not start (%s): only static peers will be used", e)
                await self.discovery.close()
                self.discovery = None
        self._health = asyncio.create_task(self._check_loop(), name="sibling health")

    async def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
            await asyncio.gather(self._health, return_exceptions=True)
        if self.discovery is not None:
            await self.discovery.close()
        await self.client.close()

    # -- membership and health ------------------------------------------------------------

    def _found(self, url: str, node_id: str, version: str | None) -> None:
        if self.table.add(url, "mdns", node_id, version) is not None:
            self._wake.set()

    def _gone(self, url: str) -> None:
        self.table.remove(url, "mdns")

    def _peer_changed(self, peer: Peer) -> None:
        state = peer.status(self.table.clock())["state"]
        log.info("sibling %s (%s) is %s%s", peer.node_id, peer.url, state,
                 f": {peer.last_error}" if peer.last_error and state != "up" else "")

    async def _check(self, peer: Peer) -> None:
        try:
            node_id, version = await self.client.ping(peer)
        except SiblingError as e:
            self.table.check_failed(peer, str(e))
        except Exception as e:   # noqa: BLE001 - one odd answer must not stop every check
            log.exception("health check of %s", peer.url)
            self.table.check_failed(peer, f"{type(e).__name__}: {e}")
        else:
            self.table.check_passed(peer, node_id, version)

    async def _check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        next_warning = started + NOBODY_WARNING_CHECKS * self.cfg.health_interval
        while True:
            self._wake.clear()         # before the checks: a sibling found meanwhile wakes us
            peers = self.table.all()
            await asyncio.gather(*(self._check(p) for p in peers))
            if (self.discovery is not None and not self.discovery.found_any
                    and loop.time() >= next_warning):
                log.warning("mDNS is on but found no sibling in %d s: is multicast blocked "
                            "between the nodes? (siblings.peers lists them statically)",
                            int(loop.time() - started))
                next_warning = loop.time() + NOBODY_WARNING_EVERY
            # A sibling on its way in is checked again soon, so it joins in about a second.
            pending = any(not p.up and p.oks > 0 for p in self.table.all())
            try:
                async with asyncio.timeout(0.5 if pending else self.cfg.health_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def live(self) -> list[Peer]:
        return self.table.live()

    @property
    def signed(self) -> bool:
        """Siblings share a secret: every live one proved it holds it."""
        return self.cfg.secret is not None

    @property
    def trusted(self) -> bool:
        """Whether what a live sibling serves for a route is taken as belonging to that
        route: it signs (a shared secret), or every live one was reached over https and
        verified against the operator's CA (siblings.tls.ca_file)."""
        if self.signed:
            return True
        tls = self.cfg.tls
        return (tls is not None and tls.ca_file is not None
                and all(p.url.startswith("https://") for p in self.live()))

    # -- the miss path ------------------------------------------------------------------

    def _failed(self, peer: Peer, err: SiblingError) -> None:
        self.table.failed(peer, err.kind, str(err))
        log.warning("%s; going on without it", err)

    def _rejected(self, peer: Peer, err: BaseException) -> None:
        """A fill refused what this sibling sent."""
        if isinstance(err, (DigestMismatch, SizeMismatch)):
            self.table.wrong_bytes(peer, str(err))
            log.warning("sibling %s sent wrong bytes (%s): not asked again for %d s", peer.node_id,
                        err, int(self.cfg.bad_for))
        elif isinstance(err, SiblingError):
            self._failed(peer, err)

    async def _probe(self, peer: Peer, route: Route, kind: str, digest: str) -> str | None:
        try:
            return await self.client.probe(peer, route, kind, digest, min(1.0, self.cfg.timeout))
        except SiblingError as e:
            self._failed(peer, e)
            return "error"

    async def locate(self, route: Route, kind: str, digest: str) -> list[tuple[Peer, Attempt]]:
        """The siblings to ask for this content, best first, each with how long to wait
        for its answer's headers and how slow it may be (empty: go to the upstream)."""
        live = self.live()
        if not live:
            return []
        found = await asyncio.gather(*(self._probe(p, route, kind, digest) for p in live))
        have = dict(zip((p.node_id for p in live), found))
        # One that has it stored answers at once; one that fetches it from the upstream
        # (now, or because it is the owner) answers when the upstream does.
        # A sibling sending what it has stored is held to min_rate (LAN speed); one
        # relaying the upstream to a far lower floor (the WAN sets its pace).
        lan = Attempt(self.cfg.timeout, self.cfg.min_rate)
        wan = Attempt(self.cfg.timeout * OWNER_WAIT_FACTOR, self.cfg.min_rate // WAN_RATE_DIVISOR)
        candidates = [(p, lan) for p in live if have[p.node_id] == "stored"][:1]
        candidates += [(p, wan) for p in live if have[p.node_id] == "filling"][:1]
        owner = rendezvous([self.node_id, *(p.node_id for p in live if p.node_id)], digest)
        if owner != self.node_id and have.get(owner) != "error":
            peer = next(p for p in live if p.node_id == owner)
            if all(peer is not c for c, _ in candidates):
                candidates.append((peer, wan))
        return candidates[:MAX_ATTEMPTS]

    @asynccontextmanager
    async def blob_source(self, route: Route, digest: Digest, upstream: SourceFactory,
                          announce: Callable[[SourceKind], None]) -> AsyncIterator[Source]:
        """The blob's body from a sibling when one can give it, else from the upstream;
        `announce` hears which, as soon as it is decided."""
        async with AsyncExitStack() as stack:
            src: Source | None = None
            for peer, attempt in await self.locate(route, "blobs", str(digest)):
                announce(SourceKind.SIBLING)
                try:
                    src = await stack.enter_async_context(
                        self.client.blob(peer, route, str(digest), self._rejected, attempt.wait,
                                         attempt.min_rate))
                except SiblingError as e:
                    self._failed(peer, e)
                    continue
                peer.stats.fetches += 1
                break
            if src is None:
                announce(SourceKind.UPSTREAM)
                src = await stack.enter_async_context(upstream())
            yield src

    async def manifest(self, route: Route, digest: Digest, cap: int) -> bytes | None:
        """A manifest by digest from a sibling, verified; None when none could give it."""
        for peer, attempt in await self.locate(route, "manifests", str(digest)):
            try:
                body = await self.client.manifest(peer, route, str(digest), cap, attempt.wait)
            except SiblingError as e:
                self._failed(peer, e)
                continue
            actual = digest_of(body, digest.algorithm)
            if actual != digest:
                self._rejected(peer, DigestMismatch(str(digest), str(actual), f"sibling {peer.node_id}"))
                continue
            peer.stats.fetches += 1
            return body
        return None

    async def last_known_tag(self, route: Route, tag: str, accept: list[str],
                             cap: int) -> tuple[TagAnswer, Peer] | None:
        """The freshest answer any live sibling has for a tag (for when the upstream is
        unreachable); the caller verifies the body against the digest.

        Only with a secret: a tag's digest is the one answer that cannot be checked by
        its content, so it is only taken from siblings that sign it."""
        if self.cfg.secret is None:
            return None
        live = self.live()

        async def ask(peer: Peer) -> TagAnswer | None:
            try:
                return await self.client.tag(peer, route, tag, accept, cap)
            except SiblingError as e:
                self._failed(peer, e)
                return None

        answers = [(a, p) for a, p in zip(await asyncio.gather(*(ask(p) for p in live)), live) if a]
        if not answers:
            return None
        now = time.time()       # a clock ahead of ours does not win
        return max(answers, key=lambda ap: min(ap[0].checked, now))

    def wrong_bytes(self, peer: Peer, detail: str) -> None:
        self.table.wrong_bytes(peer, detail)

    def served_to(self, node_id: str, nbytes: int) -> None:
        # Only siblings we know: anyone can send the marker (unsigned, without a secret).
        if node_id in self.table.stats:
            self.table.stats[node_id].bytes_to += nbytes

    # -- what operators see -----------------------------------------------------------------

    def status(self) -> dict[str, object]:
        return {"node_id": self.node_id,
                "mdns": self.discovery is not None,
                "node_id_clash": self.discovery.clash if self.discovery is not None else None,
                "live": len(self.live()),
                "peers": self.table.status(),
                "served_bytes_by_node": {n: st.bytes_to for n, st in self.table.stats.items()
                                         if st.bytes_to}}

    def collect(self) -> Iterable:
        now = self.table.clock()
        # Every listed or discovered address, even one never reached (its node is "").
        yield gauge("edgecache_sibling_up", "1 when the sibling is used (checks pass, not shunned)",
                    ["url", "node"], [([p.url, p.node_id or ""], 1.0 if p.usable(now) else 0.0)
                                      for p in self.table.all()])
        stats = sorted(self.table.stats.items())
        yield labelled_counter("edgecache_sibling_fetched_bytes", "Bytes fetched from each sibling",
                               ["node"], [([n], st.bytes_from) for n, st in stats])
        yield labelled_counter("edgecache_sibling_served_bytes", "Bytes served to each sibling",
                               ["node"], [([n], st.bytes_to) for n, st in stats])
        yield labelled_counter("edgecache_sibling_failures", "Failed requests to each sibling",
                               ["node", "reason"],
                               [([n, r], c) for n, st in stats for r, c in sorted(st.failures.items())])
