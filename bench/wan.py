"""A WAN for the benchmark: a network namespace whose only link to this host is a
rate-limited veth pair. The upstream registry runs inside it, so every byte it
sends crosses a link of a known rate, as it does from a branch office."""
from __future__ import annotations

import subprocess

NS = "ecbench-wan"
HOST_IF, NS_IF = "ecb-host", "ecb-wan"
HOST_ADDR, NS_ADDR = "10.203.0.1", "10.203.0.2"     # inside our own namespace pair only


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    subprocess.run(cmd, check=True, capture_output=True)


class Wan:
    def __init__(self, rate: str = "1gbit") -> None:
        self.rate = rate
        self.addr = NS_ADDR

    def up(self) -> "Wan":
        self.down()                                  # a leftover from a killed run
        subprocess.run(["ip", "netns", "add", NS], check=True, capture_output=True)
        _ip("link", "set", "lo", "up", ns=NS)
        _ip("link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF)
        _ip("link", "set", NS_IF, "netns", NS)
        _ip("addr", "add", f"{HOST_ADDR}/30", "dev", HOST_IF)
        _ip("link", "set", HOST_IF, "up")
        _ip("addr", "add", f"{NS_ADDR}/30", "dev", NS_IF, ns=NS)
        _ip("link", "set", NS_IF, "up", ns=NS)
        # Downstream (upstream registry -> caches) is the direction that matters.
        subprocess.run(["ip", "netns", "exec", NS, "tc", "qdisc", "add", "dev", NS_IF, "root", "tbf",
                        "rate", self.rate, "burst", "256kb", "latency", "50ms"],
                       check=True, capture_output=True)
        return self

    def down(self) -> None:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)
        subprocess.run(["ip", "link", "del", HOST_IF], capture_output=True)
