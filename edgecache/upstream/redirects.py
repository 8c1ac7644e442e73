"""Where an upstream may send us: the rules for following its redirects.

Registries send blob GETs to a CDN or an object store; that is fine anywhere, with
two exceptions: never to this cache itself (a redirect back to our own listener
would have our own answer taken as the upstream's), and never to loopback or
link-local addresses (a metadata service, a local admin port) unless the upstream
itself lives there. Manifests and tag lists are not followed off the upstream's
host at all: Distribution serves them itself, and their bytes are not checked
against a digest the client gave when asked by tag.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Awaitable, Callable

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from edgecache.addresses import Address, parse_address

MAX_REDIRECTS = 5
# Cloud metadata services outside the link-local ranges: AWS over IPv6, Alibaba, Azure's
# wire server. Never a redirect's target, wherever the upstream is.
METADATA = frozenset(ipaddress.ip_address(a) for a in
                     ("fd00:ec2::254", "100.100.100.200", "168.63.129.16"))


class AddressRefused(OSError):
    """A name resolved only to addresses a redirect may not go to (at connect time).
    An OSError on purpose, not a domain error: aiohttp's connector takes it as a failed
    connect; upstream/client.py translates it."""


def _is_local_interface(addr: Address) -> bool:
    """Whether this machine has the address (binding to it works only then)."""
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((str(addr), 0))
        return True
    except OSError:
        return False


def nearness(addr: Address) -> str | None:
    """"loopback" (this machine) or "link-local" (its wire), else None."""
    if addr.is_loopback or addr.is_unspecified:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    return None


def address_refusal(addr: Address, port: int, *, upstream_near: frozenset[str],
                    listen: tuple[str, int]) -> str | None:
    """Why a redirect may not connect to addr:port, or None."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped           # ::ffff:127.0.0.1 is 127.0.0.1
    host, own_port = listen
    own = parse_address(host)
    # Listening on every address (or a name): any address of this machine is ours.
    if port == own_port and (addr == own or ((own is None or own.is_unspecified)
                                             and _is_local_interface(addr))):
        return f"to this cache's own listener ({addr}:{port})"
    kind = nearness(addr)
    if kind is not None and kind not in upstream_near:
        return f"to a {kind} address ({addr})"
    if addr.is_multicast:
        return f"to a multicast address ({addr})"
    if addr in METADATA:
        return f"to a cloud metadata address ({addr})"
    return None


def refusal(target: URL, addresses: list[Address], *, upstream: URL,
            upstream_near: frozenset[str], listen: tuple[str, int],
            same_host_only: bool) -> str | None:
    """Why the redirect to `target` (resolving to `addresses`) is refused, or None.
    `upstream_near`: which of loopback, link-local the upstream itself is on."""
    if target.scheme not in ("http", "https") or not target.host:
        return f"to {target.scheme or 'no'}:// URL"
    if same_host_only and (target.host, target.port) != (upstream.host, upstream.port):
        return f"to another host ({target.host}) for a manifest or tag list"
    for addr in addresses:
        why = address_refusal(addr, target.port or 0, upstream_near=upstream_near, listen=listen)
        if why is not None:
            return why
    return None


class GuardedResolver(AbstractResolver):
    """The connector's resolver: a name other than the upstream's own resolves only to
    addresses a redirect may go to, checked when connecting (a name that changed its
    answer since the redirect was checked gets no further)."""

    def __init__(self, own_host: str,
                 allowed: Callable[[Address, int], Awaitable[str | None]]) -> None:
        self._inner = DefaultResolver()
        self._own = own_host.lower().rstrip(".")
        self._allowed = allowed

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if host.lower().rstrip(".") == self._own:
            return results
        kept = [r for r in results if (a := parse_address(r["host"])) is not None
                and await self._allowed(a, r["port"]) is None]
        if not kept:
            raise AddressRefused(f"{host} resolves to no address a redirect may go to")
        return kept

    async def close(self) -> None:
        await self._inner.close()


async def addresses_of(host: str, port: int) -> list[Address]:
    """The addresses a name resolves to (an IP literal: itself)."""
    literal = parse_address(host)
    if literal is not None:
        return [literal]
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [a for a in (parse_address(info[4][0]) for info in infos) if a is not None]
