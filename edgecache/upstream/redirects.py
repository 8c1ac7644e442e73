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

from yarl import URL

MAX_REDIRECTS = 5
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(host: str) -> Address | None:
    try:
        addr = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


def _is_local_interface(addr: Address) -> bool:
    """Whether this machine has the address (binding to it works only then)."""
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((str(addr), 0))
        return True
    except OSError:
        return False


def near(addr: Address) -> bool:
    """Loopback or link-local: this machine or its wire, not the internet."""
    return addr.is_loopback or addr.is_link_local or addr.is_unspecified


def refusal(target: URL, addresses: list[Address], *, upstream: URL, upstream_near: bool,
            listen: tuple[str, int], same_host_only: bool) -> str | None:
    """Why the redirect to `target` (resolving to `addresses`) is refused, or None."""
    if target.scheme not in ("http", "https") or not target.host:
        return f"to {target.scheme or 'no'}:// URL"
    if same_host_only and (target.host, target.port) != (upstream.host, upstream.port):
        return f"to another host ({target.host}) for a manifest or tag list"
    host, port = listen
    own = _ip(host)
    for addr in addresses:
        # Listening on every address (or a name): any address of this machine is ours.
        if target.port == port and (addr == own or ((own is None or own.is_unspecified)
                                                    and _is_local_interface(addr))):
            return f"to this cache's own listener ({addr}:{port})"
        if near(addr) and not upstream_near:
            return f"to a loopback or link-local address ({addr})"
        if addr.is_multicast:
            return f"to a multicast address ({addr})"
    return None


async def addresses_of(host: str, port: int) -> list[Address]:
    """The addresses a name resolves to (an IP literal: itself)."""
    literal = _ip(host)
    if literal is not None:
        return [literal]
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [a for a in (_ip(info[4][0]) for info in infos) if a is not None]
