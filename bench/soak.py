#!/usr/bin/env python3
"""Bounded soak: clients pull a rotating set of images through edgecache while the
WAN link to the upstream flaps off and on. Every byte a client receives with a 200
is checked against its digest.

    python3 bench/soak.py [--seconds 180] [--clients 4] [--flap 15] [--out FILE]

The upstream (CNCF Distribution) runs in a network namespace behind a shaped veth
pair (bench/wan.py); edgecache runs as a real process with a small budget, so it
evicts and refetches throughout. Reports requests by outcome, wrong bytes (must be
0), temp files left, and edgecache's RSS and open descriptors sampled over time.
Needs root (ip netns, tc). Traffic stays on this machine.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from wan import NS, NS_IF, Wan  # noqa: E402
from tests.support.edge import EdgeProcess, make_config  # noqa: E402
from tests.support.images import MANIFEST_TYPES, make_image, push  # noqa: E402
from tests.support.registry import Registry  # noqa: E402

MiB = 1024 * 1024
ACCEPT = ", ".join(MANIFEST_TYPES)


def link(up: bool) -> None:
    subprocess.run(["ip", "netns", "exec", NS, "ip", "link", "set", NS_IF, "up" if up else "down"],
                   check=True)


def fetch(url: str, accept: str | None = None, timeout: float = 30) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


class Client(threading.Thread):
    def __init__(self, n: int, base: str, images: list, stop: threading.Event, stats: Counter,
                 lock: threading.Lock) -> None:
        super().__init__(daemon=True)
        self.n, self.base, self.images, self.stop, self.stats, self.lock = n, base, images, stop, stats, lock

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.stats[key] += n

    def run(self) -> None:
        rng = random.Random(self.n)
        while not self.stop.is_set():
            repo, img = self.images[rng.randrange(len(self.images))]
            try:
                status, body, h = fetch(f"{self.base}/v2/{repo}/manifests/v1", ACCEPT)
                self.count(f"manifest {status}")
                if status != 200:
                    time.sleep(0.2)
                    continue
                if "sha256:" + hashlib.sha256(body).hexdigest() != img.digest:
                    self.count("wrong bytes")
                    continue
                for b in img.blobs:
                    status, data, _ = fetch(f"{self.base}/v2/{repo}/blobs/{b.digest}")
                    self.count(f"blob {status}")
                    if status == 200:
                        self.count("bytes", len(data))
                        if "sha256:" + hashlib.sha256(data).hexdigest() != b.digest:
                            self.count("wrong bytes")
                    else:
                        time.sleep(0.2)
                        break
                else:
                    self.count("images verified")
            except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
                # A response cut short (upstream gone mid-fill) surfaces here: never a 200 with wrong bytes.
                self.count(f"cut short ({type(e).__name__})")
                time.sleep(0.2)


def sample(pid: int, tmp: Path) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(status.split("VmRSS:")[1].split()[0]) / 1024
    return {"rss_mib": round(rss, 1), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "tmp_files": len(list(tmp.iterdir()))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=180)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--flap", type=float, default=15.0, help="seconds between WAN on/off")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    a.seconds = min(a.seconds, 600)                      # bounded, whatever was asked
    work = Path(tempfile.mkdtemp(prefix="edgecache-soak-"))
    wan = Wan("200mbit").up()
    reg = edge = None
    try:
        reg = Registry(workdir=work / "upstream", addr=wan.addr, netns=NS).start()
        images = []
        for i in range(a.images):
            img = make_image(500 + i, layers=3, layer_size=2 * MiB)
            push(reg.url, f"soak/img{i}", "v1", img)
            images.append((f"soak/img{i}", img))
        doc = make_config(work / "data", {"central.example": reg.url}, default="central.example",
                          tag_ttl="3s", cache={"max_size": "24MiB"},
                          upstream_timeout={"connect": "1s", "read": "5s"},
                          breaker={"failures": 2, "backoff": "2s", "max_backoff": "5s"})
        edge = EdgeProcess(work, doc).start()
        stop, stats, lock = threading.Event(), Counter(), threading.Lock()
        clients = [Client(n, edge.url, images, stop, stats, lock) for n in range(a.clients)]
        for c in clients:
            c.start()
        samples, flaps, wan_on, t0 = [], 0, True, time.monotonic()
        next_flap = t0 + a.flap
        while (now := time.monotonic()) - t0 < a.seconds:
            if now >= next_flap:
                wan_on = not wan_on
                link(wan_on)
                flaps += 1
                next_flap += a.flap
            samples.append({"t": round(now - t0), "wan": "on" if wan_on else "off",
                            **sample(edge.proc.pid, work / "data" / "tmp")})
            time.sleep(5)
        link(True)
        stop.set()
        for c in clients:
            c.join(60)
        time.sleep(3)                                    # fills in flight finish or fail
        end = sample(edge.proc.pid, work / "data" / "tmp")
        st = json.loads(fetch(f"{edge.url}/_edgecache/status")[1])
        report = {"seconds": a.seconds, "clients": a.clients, "wan_flaps": flaps,
                  "requests": {k: v for k, v in sorted(stats.items()) if k != "bytes"},
                  "bytes_verified": stats["bytes"], "wrong_bytes": stats["wrong bytes"],
                  "tmp_files_at_end": end["tmp_files"], "evictions": st["store"]["evictions"],
                  "rss_mib": [s["rss_mib"] for s in samples], "fds": [s["fds"] for s in samples],
                  "end": end}
        text = json.dumps(report, indent=1)
        print(text)
        if a.out:
            a.out.write_text(text + "\n")
        return 1 if stats["wrong bytes"] or end["tmp_files"] else 0
    finally:
        if edge is not None:
            edge.stop()
        if reg is not None:
            reg.cleanup()
        wan.down()
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    sys.exit(main())
