"""mDNS: advertise this node as `_edgecache._tcp.local.` and browse for others.

TXT holds only the node id, the version and the port. What is found goes to the
peer table as a candidate; health checks decide when it is used. A goodbye (or
an expired record) removes it. Closing unregisters, which sends our goodbye.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
from typing import Callable

import ifaddr
from zeroconf import (Error as ZeroconfError, InterfaceChoice, IPVersion, ServiceStateChange,
                      Zeroconf)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from edgecache import __version__
from edgecache.errors import DiscoveryError

log = logging.getLogger("edgecache.siblings")

SERVICE = "_edgecache._tcp.local."


def local_networks() -> list[tuple[ipaddress.IPv4Address, ipaddress.IPv4Network]]:
    """This host's IPv4 addresses with their networks."""
    out = []
    for a in ifaddr.get_adapters():
        for ip in a.ips:
            if isinstance(ip.ip, str):
                out.append((ipaddress.IPv4Address(ip.ip),
                            ipaddress.IPv4Network(f"{ip.ip}/{ip.network_prefix}", strict=False)))
    return out


def best_address(candidates: list[str], local) -> str | None:
    """Which of a sibling's advertised addresses to use: never one we have ourselves
    (docker0's 172.17.0.1 is on every node: it would lead back to us), preferably one
    on a network we are on (the LAN, not another node's container bridge)."""
    ours = {addr for addr, _ in local}
    usable = [a for a in candidates if ipaddress.IPv4Address(a) not in ours]
    for a in usable:
        if any(ipaddress.IPv4Address(a) in net for _, net in local):
            return a
    return usable[0] if usable else None


def interface_addresses(names: tuple[str, ...]) -> list[str]:
    """IPv4 addresses for interface names or addresses; all non-loopback ones when empty."""
    adapters = ifaddr.get_adapters()
    out: list[str] = []
    for a in adapters:
        v4 = [ip.ip for ip in a.ips if isinstance(ip.ip, str)]
        if not names:
            out += [ip for ip in v4 if not ipaddress.ip_address(ip).is_loopback]
        elif a.nice_name in names or a.name in names:
            out += v4
    out += [n for n in names if _is_ipv4(n) and n not in out]
    return out


def _is_ipv4(s: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(s), ipaddress.IPv4Address)
    except ValueError:
        return False


class Discovery:
    def __init__(self, node_id: str, port: int, interfaces: tuple[str, ...], listen_host: str,
                 scheme: str, *, on_found: Callable[[str, str, str | None], None],
                 on_gone: Callable[[str], None]) -> None:
        self.node_id = node_id
        self.port = port
        self.interfaces = interfaces
        self.listen_host = listen_host
        self.scheme = scheme
        self.on_found = on_found          # (url, node_id, version)
        self.on_gone = on_gone            # (url)
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._urls: dict[str, str] = {}   # service name -> url
        self._tasks: set[asyncio.Task[None]] = set()
        self._local: list = []
        self._advertised: list[str] = []
        self.found_any = False
        self.clash: str | None = None     # where a node with our id was seen

    async def start(self) -> None:
        addrs = interface_addresses(self.interfaces)
        if self.listen_host not in ("0.0.0.0", "::", ""):
            advertised = [self.listen_host]
        else:
            advertised = addrs
        self._advertised = advertised
        if not advertised:
            log.warning("mDNS: no IPv4 address to advertise on %s",
                        list(self.interfaces) or "any interface")
        self._local = await asyncio.to_thread(local_networks)
        self._zc = AsyncZeroconf(interfaces=addrs if self.interfaces else InterfaceChoice.All,
                                 ip_version=IPVersion.V4Only)
        # A name of this start's own: two boxes with one node id (a copied data_dir)
        # then show up as two services with the same id, which _check_clash reports,
        # rather than fighting over one name.
        instance = f"edgecache-{self.node_id}-{secrets.token_hex(2)}"
        name = f"{instance}.{SERVICE}"
        self._info = AsyncServiceInfo(
            SERVICE, name, port=self.port,
            properties={"id": self.node_id, "version": __version__, "port": str(self.port)},
            server=f"{instance}.local.",
            addresses=[socket.inet_aton(a) for a in advertised])
        try:
            await (await self._zc.async_register_service(self._info))
        except ZeroconfError as e:
            await self.close()
            raise DiscoveryError(f"{type(e).__name__}: {e}") from None
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, [SERVICE],
                                            handlers=[self._on_change])
        log.info("mDNS: advertising %s on %s port %d", name, advertised, self.port)

    def _check_clash(self, info: AsyncServiceInfo) -> None:
        """Our id on another address or port: a second box with a copy of our
        data_dir/node-id (our own earlier start, on our address and port, is not)."""
        addrs = set(info.parsed_addresses(IPVersion.V4Only))
        # The same addresses and port: ours (or our own earlier start). Not overlap:
        # docker0's 172.17.0.1 is advertised by every node.
        if info.port == self.port and (not addrs or addrs == set(self._advertised)):
            return
        where = f"{sorted(addrs)}:{info.port}"
        if self.clash != where:
            self.clash = where
            log.error("another node on the LAN advertises node id %r too, at %s (a copied "
                      "data_dir/node-id?): give each node its own", self.node_id, where)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._zc is not None:
            await self._zc.async_close()     # unregisters: the goodbye goes out
        self._zc = self._browser = None

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            url = self._urls.pop(name, None)
            # (An earlier start of the same node, expiring, may share the URL of the
            # one that runs now: only the last name for a URL takes it away.)
            if url and url not in self._urls.values():
                log.info("mDNS: %s said goodbye", name)
                self.on_gone(url)
            return
        task = asyncio.ensure_future(self._resolve(service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        assert self._zc is not None
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zc.zeroconf, 3000):
            return
        props = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
        node_id = props.get("id")
        if node_id == self.node_id:
            self._check_clash(info)
            return                        # ourselves (or a clone of us: see above)
        if not node_id:
            return                        # not one of ours
        addr = best_address(info.parsed_addresses(IPVersion.V4Only), self._local)
        port = info.port or int(props.get("port") or 0)
        if not addr or not port:
            return
        url = f"{self.scheme}://{addr}:{port}"
        old = self._urls.get(name)
        if old and old != url:
            self.on_gone(old)
        self._urls[name] = url
        self.found_any = True
        self.on_found(url, node_id, props.get("version"))
