"""IP addresses as clients and URLs give them, read one way everywhere: brackets
and an IPv6 zone dropped, an IPv4-mapped IPv6 address taken as the IPv4 one (a
dual-stack listener reports IPv4 clients so)."""
from __future__ import annotations

import ipaddress

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str | None) -> Address | None:
    """The address, or None when text is not one (a host name, empty)."""
    try:
        addr = ipaddress.ip_address((text or "").strip("[]").split("%")[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr
