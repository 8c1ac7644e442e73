"""A branch office in network namespaces: nodes on one LAN bridge (real
multicast, so mDNS is real), a `central` namespace whose link to the LAN is
rate-limited to play the WAN, and this process on the LAN too (as the test's
console: it pushes to central and asks the nodes for their status).

    with Branch(nodes=3, wan_rate="400mbit") as br:
        br.ns("n1")                 # namespace name, for `ip netns exec`
        br.addr("n1"), br.addr("central"), br.host_addr
        br.wan(False)               # cut the WAN; True restores it
        br.shape("n2", "80mbit")    # slow one node's LAN link (a node far down a switch chain)

Needs root and iproute2. Names carry a random tag, so runs never collide.
"""
from __future__ import annotations

import secrets
import subprocess

SUBNET = "10.77.0"


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


class Branch:
    def __init__(self, nodes: int = 3, wan_rate: str = "100mbit") -> None:
        self.tag = "ec" + secrets.token_hex(2)
        self.nodes = [f"n{i}" for i in range(1, nodes + 1)]
        self.wan_rate = wan_rate
        self.host_addr = f"{SUBNET}.1"
        self._made: list[str] = []
        self._host_if = f"{self.tag}hst"

    def ns(self, host: str) -> str:
        return f"{self.tag}{host}"

    def addr(self, host: str) -> str:
        return f"{SUBNET}.100" if host == "central" else f"{SUBNET}.1{host[1:]}"

    def _in(self, host: str, *cmd: str) -> None:
        _run("ip", "netns", "exec", self.ns(host), *cmd)

    def _add(self, host: str) -> None:
        ns = self.ns(host)
        _run("ip", "netns", "add", ns)
        self._made.append(ns)
        self._in(host, "ip", "link", "set", "lo", "up")
        inner, outer = f"{self.tag}{host}i", f"{self.tag}{host}o"
        _run("ip", "link", "add", inner, "type", "veth", "peer", "name", outer)
        _run("ip", "link", "set", inner, "netns", ns)
        _run("ip", "link", "set", outer, "netns", self.ns("lan"))
        self._in("lan", "ip", "link", "set", outer, "master", "br0")
        self._in("lan", "ip", "link", "set", outer, "up")
        self._in(host, "ip", "addr", "add", f"{self.addr(host)}/24", "dev", inner)
        self._in(host, "ip", "link", "set", inner, "up")

    def up(self) -> "Branch":
        try:
            _run("ip", "netns", "add", self.ns("lan"))
            self._made.append(self.ns("lan"))
            self._in("lan", "ip", "link", "add", "br0", "type", "bridge")
            self._in("lan", "ip", "link", "set", "br0", "up")
            self._add("central")
            # Downstream (central -> branch) is what a pull spends.
            self._in("central", "tc", "qdisc", "add", "dev", f"{self.tag}centrali", "root", "tbf",
                     "rate", self.wan_rate, "burst", "256kb", "latency", "100ms")
            for n in self.nodes:
                self._add(n)
            # This process's own port on the LAN.
            _run("ip", "link", "add", self._host_if, "type", "veth", "peer", "name", f"{self.tag}hsp")
            _run("ip", "link", "set", f"{self.tag}hsp", "netns", self.ns("lan"))
            self._in("lan", "ip", "link", "set", f"{self.tag}hsp", "master", "br0")
            self._in("lan", "ip", "link", "set", f"{self.tag}hsp", "up")
            _run("ip", "addr", "add", f"{self.host_addr}/24", "dev", self._host_if)
            _run("ip", "link", "set", self._host_if, "up")
        except BaseException:
            self.down()
            raise
        return self

    def wan(self, on: bool) -> None:
        self._in("lan", "ip", "link", "set", f"{self.tag}centralo", "up" if on else "down")

    def shape(self, host: str, rate: str | None) -> None:
        """Limit what `host` sends on the LAN (None: remove the limit)."""
        dev = self.interface(host)
        if rate is None:
            subprocess.run(["ip", "netns", "exec", self.ns(host), "tc", "qdisc", "del", "dev", dev,
                            "root"], capture_output=True)
        else:
            self._in(host, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate,
                     "burst", "64kb", "latency", "400ms")

    def interface(self, host: str) -> str:
        """The name of `host`'s LAN interface, inside its namespace."""
        return f"{self.tag}{host}i"

    def exec_prefix(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host)]

    def down(self) -> None:
        subprocess.run(["ip", "link", "del", self._host_if], capture_output=True)
        for ns in reversed(self._made):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
            for pid in pids.split():
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made.clear()

    def __enter__(self) -> "Branch":
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()
