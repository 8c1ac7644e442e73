"""Which upstream and repository a request is for.

In this order: `?ns=<registry>` (containerd, K3s); a path prefix naming a
configured upstream, `/v2/<registry>/<repo>/...` (podman, skopeo, Docker); else
the default upstream. `ns` is only a lookup key: an unconfigured registry is
never dialled.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection

from edgecache.config import normalize_registry
from edgecache.errors import UnknownRegistry
from edgecache.reference import validate_name


@dataclass(frozen=True)
class Route:
    upstream: str      # the key in `upstreams:`
    repo: str          # the repository as the upstream names it


def resolve(name: str, ns: str | None, upstreams: Collection[str], default: str | None) -> Route:
    if ns is not None:
        registry = normalize_registry(ns)
        if registry not in upstreams:
            raise UnknownRegistry(ns)
        return _route(registry, name)
    first, sep, rest = name.partition("/")
    if sep and normalize_registry(first) in upstreams:
        return _route(normalize_registry(first), rest)
    if default is None:
        raise UnknownRegistry(first if sep else "")
    return _route(default, name)


class Router:
    """resolve() for the upstreams the process runs with, remembered per (name, ns):
    clients ask for the same few repositories again and again. Bounded in entries and
    in size: a name that does not resolve, or a long one (padded to fill memory), is
    never kept."""

    KEPT = 4096
    KEY_KEPT = 320     # characters of name and ns: a 255-character name with its registry

    def __init__(self, upstreams: Collection[str], default: str | None) -> None:
        self.upstreams = frozenset(upstreams)
        self.default = default
        self._known: dict[tuple[str, str | None], Route] = {}

    def __call__(self, name: str, ns: str | None) -> Route:
        key = (name, ns)
        route = self._known.get(key)
        if route is None:
            route = resolve(name, ns, self.upstreams, self.default)
            if len(name) + (len(ns) if ns else 0) > self.KEY_KEPT:
                return route
            if len(self._known) >= self.KEPT:
                self._known.clear()
            self._known[key] = route
        return route


def _route(registry: str, repo: str) -> Route:
    validate_name(repo)
    if registry == "docker.io" and "/" not in repo:
        # Docker Hub's official images live under library/.
        repo = f"library/{repo}"
    return Route(registry, repo)
