"""A branch LAN with edgecaches on it, for tests and the benchmark: a Branch
(network namespaces, WAN link), the real Distribution registry in `central`, and
edgecache processes on the nodes, each pulled from by skopeo in its own namespace
at 127.0.0.1:5000, the way K3s pulls from a node-local mirror."""
from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

from .branch import Branch
from .edge import EdgeProcess
from .registry import Registry

NODES = ("n1", "n2", "n3")


class Lan:
    def __init__(self, br: Branch, reg: Registry, tmp: Path) -> None:
        self.br, self.reg, self.tmp = br, reg, tmp
        self.nodes: dict[str, EdgeProcess] = {}
        (tmp / "secret").write_text("branch-7f3a9c5e2b1d4068\n")     # the site's shared secret

    def doc(self, name: str, siblings: bool) -> dict:
        doc = {"listen": "0.0.0.0:5000", "data_dir": str(self.tmp / name / "data"),
               "upstreams": {"central.example": {"url": f"http://{self.br.addr('central')}:5000"}},
               "default_upstream": "central.example",
               "upstream_timeout": {"connect": "1s", "read": "10s"},
               "cache": {"scrub_interval": 0}}
        if siblings:
            # No peers: they find each other over mDNS. n3 names its LAN interface (the
            # others use every interface they have).
            doc["siblings"] = {"node_id": name, "secret_file": str(self.tmp / "secret"),
                               "health_interval": "1s", "timeout": "2s", "read_timeout": "2s",
                               "bad_for": "8s"}
            if name == "n3":
                doc["siblings"]["interfaces"] = [self.br.interface(name)]
        return doc

    def start(self, name: str, siblings: bool = True) -> EdgeProcess:
        work = self.tmp / name
        work.mkdir(exist_ok=True)
        node = EdgeProcess(work, self.doc(name, siblings), netns_prefix=self.br.exec_prefix(name),
                           url=f"http://{self.br.addr(name)}:5000").start()
        self.nodes[name] = node
        return node

    def stop_all(self) -> None:
        for node in self.nodes.values():
            node.stop()
        self.nodes.clear()

    def status(self, name: str) -> dict:
        with urllib.request.urlopen(self.nodes[name].url + "/_edgecache/status", timeout=5) as r:
            return json.load(r)

    def wait(self, pred, timeout: float = 30.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            time.sleep(0.2)
        return pred()

    def skopeo(self, name: str, ref: str, dest: Path) -> subprocess.Popen:
        dest.parent.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(
            [*self.br.exec_prefix(name), "skopeo", "copy", "--src-tls-verify=false",
             f"docker://127.0.0.1:5000/{ref}", f"oci:{dest}:latest"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def pull_all(self, ref: str, names=None) -> float:
        """Every named node pulls ref at the same moment; returns the wall time."""
        names = names or self.br.nodes
        t0 = time.monotonic()
        procs = {n: self.skopeo(n, ref, self.out(ref, n)) for n in names}
        for n, p in procs.items():
            out, err = p.communicate(timeout=180)
            assert p.returncode == 0, f"{n}: {err[-2000:]}"
        return time.monotonic() - t0

    def out(self, ref: str, name: str) -> Path:
        return self.tmp / "out" / ref.replace("/", "_").replace(":", "_") / name

    def upstream_bytes(self, img) -> int:
        return sum(self.reg.bytes_sent(rf"/v2/.*/blobs/{b.digest}") for b in img.blobs)
