"""The signature policy: manifests of the repositories a rule matches are served
only when a cosign signature for their digest, or for an index that names them,
verifies with one of the rule's keys.

A decision is kept per (route, digest, rule): a good one for as long as it is
remembered (a signature that verified stays good; the digest cannot change), a
bad one for RECHECK_AFTER (a signature is often pushed just after its image).
So by-tag requests cost a dictionary lookup once an image was checked.
Supply-chain artifacts themselves (signatures, attestations, SBOMs: nothing a
runtime can run) are not asked for a signature of their own.
"""
from __future__ import annotations

import fnmatch
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

from yarl import URL

from edgecache.artifacts import is_artifact_only
from edgecache.config import PolicyRule, normalize_registry
from edgecache.errors import PolicyDenied
from edgecache.jsondoc import document
from edgecache.mediatypes import INDEX_TYPES
from edgecache.metrics import Metrics
from edgecache.policy.cosign import check
from edgecache.policy.signatures import SignatureFinder
from edgecache.pull.routing import Route
from edgecache.singleflight import SingleFlight
from edgecache.sync.lists import parse_ref

if TYPE_CHECKING:       # keys.py brings in cryptography (7 MiB resident): only with rules
    from edgecache.policy.keys import PublicKey

log = logging.getLogger("edgecache.policy")

RECHECK_AFTER = 10.0         # seconds a failed check is remembered
DECISIONS_KEPT = 65_536
PARENTS_KEPT = 65_536        # (route, manifest) -> the verified indexes naming it
PARENTS_PER_MANIFEST = 8
ROUTES_KEPT = 4096


@dataclass(frozen=True)
class Decision:
    ok: bool
    rule: str
    mode: str
    reason: str              # "verified by tag sha256-….sig", "exempt: ...", or why not
    exempt: bool = False
    children: tuple[str, ...] = ()   # a verified index's manifests (served on its signature)

    @property
    def result(self) -> str:
        """As counted: verified, exempt, denied (enforce) or warned."""
        if self.ok:
            return "exempt" if self.exempt else "verified"
        return "warned" if self.mode == "warn" else "denied"


@dataclass(frozen=True)
class _Rule:
    cfg: PolicyRule
    keys: tuple[PublicKey, ...]

    def matches(self, route: Route) -> bool:
        name = f"{route.upstream}/{route.repo}"
        return any(fnmatch.fnmatchcase(name, g) for g in self.cfg.match)


class Policy:
    def __init__(self, rules: tuple[PolicyRule, ...], finder: SignatureFinder, metrics: Metrics,
                 upstream_urls: Mapping[str, str], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rules:
            from edgecache.policy.keys import load_public_key
        self.rules = [_Rule(r, tuple(load_public_key(p) for p in r.public_keys)) for r in rules]
        self.finder = finder
        self.metrics = metrics
        self.clock = clock
        # The names a signature's docker-reference may give an upstream: its key, and
        # the host it is dialled at.
        self._hosts = {name: {name, normalize_registry(URL(url).raw_authority)}
                       for name, url in upstream_urls.items()}
        self._routes: dict[tuple[str, str], tuple[_Rule, ...]] = {}
        self._decisions: OrderedDict[tuple, tuple[Decision, float]] = OrderedDict()
        self._parents: OrderedDict[tuple, set[str]] = OrderedDict()
        self._flight = SingleFlight()

    @property
    def active(self) -> bool:
        return bool(self.rules)

    def rules_for(self, route: Route) -> tuple[_Rule, ...]:
        key = (route.upstream, route.repo)
        found = self._routes.get(key)
        if found is None:
            if len(self._routes) >= ROUTES_KEPT:
                self._routes.clear()
            found = self._routes[key] = tuple(r for r in self.rules if r.matches(route))
        return found

    def cleared(self, route: Route, digest: str) -> bool:
        """The usual case, without a coroutine: every rule over the route decided before
        that this manifest may go (counted, and its children noted, as check() would).
        False: ask check()."""
        decided = []
        for rule in self.rules_for(route):
            key = (route, digest, rule.cfg.name)
            kept = self._decisions.get(key)
            if kept is None or not kept[0].ok:
                return False
            decided.append(kept[0])
            self._decisions.move_to_end(key)     # a busy image is the last forgotten
        for d in decided:
            if d.children:
                self._note_children(route, digest, d.children)
            self.metrics.policy(d.rule, d.result)
        return True

    async def check(self, route: Route, digest: str, body: bytes) -> None:
        """For a manifest about to be served: raise PolicyDenied if an enforcing rule
        refuses it; a warning rule's refusal is logged (once per recheck) and counted.
        The caller asks cleared() first: this is the way for anything not yet decided good."""
        for rule in self.rules_for(route):
            kept = self._decisions.get((route, digest, rule.cfg.name))
            # The usual case, decided before and good: no coroutine, no reordering.
            d = kept[0] if kept is not None and kept[0].ok else \
                await self.decide(rule, route, digest, body)
            if d.children:
                self._note_children(route, digest, d.children)
            if d.ok:
                self.metrics.policy(d.rule, d.result)
            else:
                self.metrics.policy(d.rule, d.result)
                self.metrics.recent.error("policy", f"{d.rule} ({d.result}): {route.upstream}/"
                                          f"{route.repo}@{digest}: {d.reason}")
                if d.mode == "enforce":
                    raise PolicyDenied(d.rule, digest, d.reason)

    async def refusals(self, route: Route, digest: str, body: bytes) -> list[Decision]:
        """Every failing decision for a manifest (the syncer: it refuses to switch a
        tag to an image an enforcing rule refuses), asked afresh."""
        out = []
        for rule in self.rules_for(route):
            self._decisions.pop((route, digest, rule.cfg.name), None)
            d = await self.decide(rule, route, digest, body)
            if not d.ok:
                out.append(d)
        return out

    async def decide(self, rule: _Rule, route: Route, digest: str, body: bytes | None,
                     depth: int = 0) -> Decision:
        key = (route, digest, rule.cfg.name)
        kept = self._decisions.get(key)
        if kept is not None and (kept[0].ok or kept[1] > self.clock()):
            self._decisions.move_to_end(key)
            return kept[0]
        decision = await self._flight.do(key, lambda: self._decide(rule, route, digest, body, depth))
        self._decisions[key] = (decision, self.clock() + RECHECK_AFTER)
        while len(self._decisions) > DECISIONS_KEPT:
            self._decisions.popitem(last=False)
        return decision

    async def _decide(self, rule: _Rule, route: Route, digest: str, body: bytes | None,
                      depth: int) -> Decision:
        name, mode = rule.cfg.name, rule.cfg.mode
        if body is not None and is_artifact_only(body):
            return Decision(True, name, mode, "exempt: a supply-chain artifact", exempt=True)
        signatures, unseen = await self.finder.find(route, digest)
        why: list[str] = []
        hosts = self._hosts.get(route.upstream, {route.upstream})
        for sig in signatures:
            problem = check(sig, rule.keys, digest, lambda ref: _same_repository(ref, route, hosts))
            if problem is None:
                # Only a verified index vouches for what it names.
                return Decision(True, name, mode, f"verified by {sig.where}",
                                children=_index_children(body) if body is not None else ())
            why.append(problem)
        if depth == 0:
            for parent in sorted(self._parents.get((route, digest), ())):
                d = await self.decide(rule, route, parent, None, depth=1)
                if d.ok:
                    return Decision(True, name, mode, f"{d.reason}, for the index {parent}")
                why.append(f"index {parent}: {d.reason}")
        if not why:
            why.append("no signature found")
        if unseen:
            why.append("not looked at: " + ", ".join(unseen[:4]))
        reason = "; ".join(why)[:1000]
        log.warning("policy rule %s (%s): %s/%s@%s: %s", name, mode, route.upstream, route.repo,
                    digest, reason)
        return Decision(False, name, mode, reason)

    def _note_children(self, route: Route, digest: str, children: tuple[str, ...]) -> None:
        """A verified index's platform manifests may be served on its signature (noted
        again on every answer of it, so a busy index is never forgotten)."""
        for child in children:
            parents = self._parents.get((route, child))
            if parents is None:
                parents = self._parents[(route, child)] = set()
            elif digest in parents:
                self._parents.move_to_end((route, child))
                continue
            if len(parents) >= PARENTS_PER_MANIFEST:
                parents.pop()
            parents.add(digest)
        while len(self._parents) > PARENTS_KEPT:
            self._parents.popitem(last=False)


def _index_children(body: bytes) -> tuple[str, ...]:
    """The manifests an index names (at most 1024); nothing for anything else."""
    if b'"manifests"' not in body:
        return ()
    doc = document(body)
    if doc is None or not isinstance(doc.get("manifests"), list) or \
            doc.get("mediaType", "") not in (*INDEX_TYPES, ""):
        return ()
    return tuple(m["digest"] for m in doc["manifests"][:1024]
                 if isinstance(m, dict) and isinstance(m.get("digest"), str))


def _same_repository(reference: str, route: Route, hosts: set[str]) -> bool:
    """Whether a signature's docker-reference names the route's repository (any tag
    or digest on it), on the upstream by its key or its host."""
    try:
        ref = parse_ref(reference)
    except ValueError:
        return False
    return ref.repo == route.repo and ref.upstream in hosts
