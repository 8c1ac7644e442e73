#!/usr/bin/env python3
"""Siblings on a branch LAN: what they save on the WAN, and what they cost.

    python3 bench/siblings.py [--rates 100mbit,400mbit] [--layers 4] [--layer-mib 25] [--out FILE]

Three nodes in network namespaces on one bridge (real mDNS), the Distribution
registry behind a rate-limited WAN link, edgecache on each node, skopeo pulling on
each node from its own edgecache. For each WAN rate, in one run:
  (a) all three nodes pull the same image at once: without siblings, then with;
      wall time and the image's bytes the registry sent (from its access log);
  (b) one node pulls an image, then a second node pulls it: from the WAN (no
      siblings) versus from the sibling that has it.
Needs root (ip netns, tc), docker-registry and skopeo. Traffic stays on this machine.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.branch import Branch  # noqa: E402
from tests.support.images import make_image, push  # noqa: E402
from tests.support.lan import Lan  # noqa: E402
from tests.support.registry import Registry  # noqa: E402

MiB = 1024 * 1024


def ready(lan: Lan) -> bool:
    try:
        return all(lan.status(n)["siblings"]["live"] == len(lan.br.nodes) - 1 for n in lan.br.nodes)
    except OSError:
        return False


def run_rate(rate: str, layers: int, layer_mib: int, tmp: Path, seed: int) -> dict:
    res: dict = {"wan": rate}
    with Branch(nodes=3, wan_rate=rate) as br:
        reg = Registry(workdir=tmp / "central", addr=br.addr("central"), port=5000,
                       netns=br.ns("central")).start()
        lan = Lan(br, reg, tmp)
        try:
            imgs = [make_image(seed + i, layers=layers, layer_size=layer_mib * MiB) for i in range(4)]
            for i, img in enumerate(imgs):
                push(reg.url, "bench/img", f"v{i}", img)
            size = sum(b.size for b in imgs[0].blobs)
            res["image_mib"] = round(size / MiB, 1)

            for n in br.nodes:
                lan.start(n, siblings=False)
            t_alone = lan.pull_all("bench/img:v0")
            b_alone = lan.upstream_bytes(imgs[0])
            t_first = lan.pull_all("bench/img:v1", names=["n1"])
            t_second_wan = lan.pull_all("bench/img:v1", names=["n2"])
            lan.stop_all()

            t0 = time.monotonic()
            for n in br.nodes:
                lan.start(n)
            assert lan.wait(lambda: ready(lan), 60), "siblings did not find each other"
            res["discovery_s"] = round(time.monotonic() - t0, 1)
            t_together = lan.pull_all("bench/img:v2")
            b_together = lan.upstream_bytes(imgs[2])
            lan.pull_all("bench/img:v3", names=["n1"])
            before = lan.upstream_bytes(imgs[3])
            t_second_lan = lan.pull_all("bench/img:v3", names=["n2"])
            res["a_three_at_once"] = {
                "without_siblings_s": round(t_alone, 2), "with_siblings_s": round(t_together, 2),
                "time_ratio": round(t_together / t_alone, 2),
                "wan_bytes_without_x_image": round(b_alone / size, 2),
                "wan_bytes_with_x_image": round(b_together / size, 2)}
            res["b_second_node"] = {
                "first_node_from_wan_s": round(t_first, 2),
                "second_from_wan_s": round(t_second_wan, 2),
                "second_from_sibling_s": round(t_second_lan, 2),
                "time_ratio": round(t_second_lan / t_second_wan, 2),
                "wan_bytes_for_second_with_siblings": lan.upstream_bytes(imgs[3]) - before}
        finally:
            lan.stop_all()
            reg.cleanup()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="100mbit,400mbit")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--layer-mib", type=int, default=25)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    results = {"machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
               "runs": []}
    for i, rate in enumerate(args.rates.split(",")):
        with tempfile.TemporaryDirectory(prefix="ecsib-") as tmp:
            r = run_rate(rate, args.layers, args.layer_mib, Path(tmp), 900 + 10 * i)
        results["runs"].append(r)
        a, b = r["a_three_at_once"], r["b_second_node"]
        print(f"WAN {rate}, image {r['image_mib']} MiB, mDNS discovery {r['discovery_s']} s")
        print(f"  (a) 3 nodes at once: {a['without_siblings_s']} s -> {a['with_siblings_s']} s "
              f"({a['time_ratio']}x); WAN bytes {a['wan_bytes_without_x_image']}x -> "
              f"{a['wan_bytes_with_x_image']}x the image")
        print(f"  (b) second node: from the WAN {b['second_from_wan_s']} s, from a sibling "
              f"{b['second_from_sibling_s']} s ({b['time_ratio']}x), WAN bytes "
              f"{b['wan_bytes_for_second_with_siblings']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
