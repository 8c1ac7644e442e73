"""The peer table: who the siblings are and whether to ask them.

mDNS says who exists; only our own health checks say who is usable (record
lifetimes are far too long to trust). A sibling is dropped after `fail_after`
failed checks in a row and readmitted after `readmit_after` good ones. One that
sent wrong bytes is shunned for `bad_for` whatever its checks say.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable


MAX_NODES = 256                   # node ids whose counters are kept at most (see _admitted)


@dataclass
class NodeStats:
    """Counters per sibling node, kept by node id: a node listed and discovered too
    counts once, and one that leaves and comes back goes on counting."""
    bytes_from: int = 0               # blob, manifest and tag bytes we fetched from it
    bytes_to: int = 0                 # bytes we served to it
    fetches: int = 0
    failures: dict[str, int] = field(default_factory=dict)


@dataclass
class Peer:
    url: str                          # base URL, e.g. http://10.77.0.12:5000
    via: str                          # "mdns" or "static"
    node_id: str | None = None        # from mDNS TXT, or learned from the first check
    version: str | None = None
    up: bool = False                  # admitted: checks passed readmit_after times
    oks: int = 0                      # consecutive good checks
    fails: int = 0                    # consecutive failed checks
    bad_until: float = 0.0
    last_error: str | None = None
    last_check: float | None = None
    stats: NodeStats = field(default_factory=NodeStats)   # the table's, once the id is known

    def usable(self, now: float) -> bool:
        return self.up and self.bad_until <= now and self.node_id is not None

    def status(self, now: float) -> dict[str, object]:
        state = "bad" if self.bad_until > now else ("up" if self.up else "down")
        return {"url": self.url, "node_id": self.node_id, "via": self.via, "version": self.version,
                "state": state, "consecutive_failures": self.fails,
                "bad_for_s": round(max(0.0, self.bad_until - now), 1),
                "last_error": self.last_error, "last_check": self.last_check,
                "bytes_fetched": self.stats.bytes_from, "bytes_served": self.stats.bytes_to,
                "fetches": self.stats.fetches, "failures": dict(self.stats.failures)}


def rendezvous(node_ids: Iterable[str], digest: str) -> str:
    """The node that fetches `digest` from the WAN: highest hash of (node, digest).

    Every node computes the same answer from the same membership, and a node
    joining or leaving moves only the digests it wins or held.
    """
    return max(node_ids, key=lambda n: hashlib.sha256(f"{n}\n{digest}".encode()).digest())


class PeerTable:
    def __init__(self, self_id: str, *, fail_after: int, readmit_after: int, bad_for: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.self_id = self_id
        self.fail_after = fail_after
        self.readmit_after = readmit_after
        self.bad_for = bad_for
        self.clock = clock
        self._peers: dict[str, Peer] = {}
        self.stats: dict[str, NodeStats] = {}
        self.on_change: Callable[[Peer], None] | None = None

    def _identify(self, peer: Peer, node_id: str) -> None:
        """Who answers at this peer's address (now): a claim until checks admit it."""
        if peer.node_id == node_id:
            return
        peer.node_id, peer.up, peer.oks = node_id, False, 0
        peer.stats = NodeStats()

    def _admitted(self, peer: Peer) -> None:
        """From now on its counters are its node's, kept by id. Only admitted nodes get
        an entry (anyone can claim ids over mDNS), and ids no longer listed anywhere
        are let go when there are many."""
        assert peer.node_id is not None
        kept = self.stats.get(peer.node_id)
        if kept is None:
            if len(self.stats) >= MAX_NODES:
                listed = {p.node_id for p in self._peers.values()}
                for n in [n for n in self.stats if n not in listed]:
                    del self.stats[n]
            self.stats[peer.node_id] = peer.stats
        elif kept is not peer.stats:
            kept.bytes_from += peer.stats.bytes_from
            kept.fetches += peer.stats.fetches
            for r, c in peer.stats.failures.items():
                kept.failures[r] = kept.failures.get(r, 0) + c
            peer.stats = kept

    # -- membership --------------------------------------------------------------

    def add(self, url: str, via: str, node_id: str | None = None,
            version: str | None = None) -> Peer | None:
        if node_id == self.self_id:
            return None
        peer = self._peers.get(url)
        if peer is None:
            peer = self._peers[url] = Peer(url, via, version=version)
        if node_id:
            # (Another node now answering at this address starts over, unadmitted.)
            self._identify(peer, node_id)
        peer.version = version or peer.version
        return peer

    def remove(self, url: str, via: str) -> None:
        """A goodbye (or a vanished mDNS record); static peers stay."""
        peer = self._peers.get(url)
        if peer is not None and peer.via == via:
            del self._peers[url]

    def all(self) -> list[Peer]:
        return list(self._peers.values())

    def live(self) -> list[Peer]:
        """Usable siblings, one per node (a node may be listed and discovered too)."""
        now = self.clock()
        seen: dict[str, Peer] = {}
        for p in self._peers.values():
            if p.usable(now) and p.node_id not in seen:
                seen[p.node_id] = p            # type: ignore[index]
        return list(seen.values())

    # -- health --------------------------------------------------------------------

    def check_passed(self, peer: Peer, node_id: str, version: str | None) -> None:
        peer.last_check = time.time()
        if node_id == self.self_id:
            # A static list that names this node too (one list for the whole site).
            self._peers.pop(peer.url, None)
            return
        self._identify(peer, node_id)
        peer.version = version or peer.version
        peer.fails = 0
        peer.oks += 1
        if not peer.up and peer.oks >= self.readmit_after:
            peer.up = True
            self._admitted(peer)
            peer.last_error = None
            self._changed(peer)

    def check_failed(self, peer: Peer, why: str) -> None:
        peer.last_check = time.time()
        peer.last_error = why
        peer.oks = 0
        peer.fails += 1
        if peer.up and peer.fails >= self.fail_after:
            peer.up = False
            self._changed(peer)

    # -- what requests found ----------------------------------------------------------

    def failed(self, peer: Peer, reason: str, detail: str) -> None:
        """A request to it failed (timeout, broken body): counted, and its health
        checks decide whether it stays."""
        peer.stats.failures[reason] = peer.stats.failures.get(reason, 0) + 1
        peer.last_error = detail

    def wrong_bytes(self, peer: Peer, detail: str) -> None:
        """It sent bytes that do not match their digest: shunned for bad_for."""
        peer.stats.failures["wrong_bytes"] = peer.stats.failures.get("wrong_bytes", 0) + 1
        peer.last_error = detail
        peer.bad_until = self.clock() + self.bad_for
        self._changed(peer)

    def _changed(self, peer: Peer) -> None:
        if self.on_change:
            self.on_change(peer)

    def status(self) -> list[dict[str, object]]:
        now = self.clock()
        return [p.status(now) for p in self._peers.values()]
