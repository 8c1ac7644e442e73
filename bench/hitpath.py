#!/usr/bin/env python3
"""The hit path of two versions of edgecache side by side, in one run.

    python3 bench/hitpath.py --before COMMIT [--seconds 10] [--rounds 3] [--out FILE]

One Distribution registry as the upstream; two edgecache processes in front of it,
"before" (a git worktree of COMMIT, run with PYTHONPATH) and "after" (this tree),
each with its access log on and written to a file, as in production. Both are warmed,
then measured in interleaved rounds: (b) manifest by digest and by tag, `wrk -t2 -c32`;
(a) one warm 128 MiB blob, 8 parallel curl. Prints medians and after/before ratios:
ratios in one run, never absolute figures across runs.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import measure  # noqa: E402
from tests.support.edge import EdgeProcess, make_config  # noqa: E402
from tests.support.images import MANIFEST_TYPES, OCI_LAYER, Blob, make_image, push, push_blob  # noqa: E402
from tests.support.registry import Registry  # noqa: E402

MiB = 1 << 20
BLOB_SIZE = 128 * MiB
REPO = "demo/app"
ACCEPT = {"Accept": ", ".join(MANIFEST_TYPES)}


def log(msg: str) -> None:
    print(f"[hitpath {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def start_edge(workdir: Path, upstream: Registry, name: str, pythonpath: Path | None) -> EdgeProcess:
    d = workdir / name
    d.mkdir()
    doc = make_config(d / "data", {"central.example": upstream.url}, default="central.example",
                      tag_ttl="1h", cache={"max_size": "16GiB"},
                      upstream_timeout={"connect": "2s", "read": "60s"})
    prefix = ["env", f"PYTHONPATH={pythonpath}"] if pythonpath else None
    return EdgeProcess(d, doc, netns_prefix=prefix).start()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="the commit to compare this tree with")
    ap.add_argument("--seconds", type=int, default=10, help="per wrk run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, help="also write the report here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hitpath-") as tmp:
        work = Path(tmp)
        tree = work / "before-tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.before],
                       check=True, capture_output=True)
        try:
            return run(work, tree, args)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           capture_output=True)


def run(work: Path, tree: Path, args: argparse.Namespace) -> int:
    up = Registry(workdir=work / "upstream").start()
    edges: dict[str, EdgeProcess] = {}
    try:
        img = make_image(7, layers=2, layer_size=64 * 1024)
        digest = push(up.url, REPO, "v1", img)
        blob = Blob(OCI_LAYER, os.urandom(BLOB_SIZE))
        push_blob(up.url, REPO, blob)
        edges = {"before": start_edge(work, up, "before", tree),
                 "after": start_edge(work, up, "after", None)}
        paths = {"digest": f"/v2/{REPO}/manifests/{digest}", "tag": f"/v2/{REPO}/manifests/v1"}
        blob_path = f"/v2/{REPO}/blobs/{blob.digest}"
        for name, e in edges.items():
            for path in paths.values():
                status, body = measure.http_get(e.url + path, ACCEPT)
                if status != 200 or "sha256:" + hashlib.sha256(body).hexdigest() != digest:
                    raise RuntimeError(f"{name} {path}: HTTP {status} or wrong manifest")
            for _ in range(2):              # the first GET fills
                _, res = measure.curl_parallel([e.url + blob_path])
                measure.check_fetches(res, BLOB_SIZE, f"warm-up {name}")
        time.sleep(1)
        rps: dict[tuple[str, str], list[float]] = {}
        cpu_us: dict[tuple[str, str], list[float]] = {}
        gbps: dict[str, list[float]] = {n: [] for n in edges}
        for r in range(args.rounds):
            log(f"round {r + 1} of {args.rounds}")
            # Each goes first every other round: no order effect (a warmer CPU) on either.
            order = list(edges.items()) if r % 2 == 0 else list(reversed(edges.items()))
            for kind, path in paths.items():
                for name, e in order:
                    assert e.proc is not None
                    cpu0 = measure.cpu_seconds(e.proc.pid)
                    res = measure.wrk(e.url + path, args.seconds, ACCEPT)
                    used = measure.cpu_seconds(e.proc.pid) - cpu0
                    if res.non2xx or res.socket_errors != "none":
                        raise RuntimeError(f"{name} {kind}: {res.non2xx} non-2xx, "
                                           f"{res.socket_errors} socket errors")
                    rps.setdefault((kind, name), []).append(res.rps)
                    cpu_us.setdefault((kind, name), []).append(used / max(1, res.requests) * 1e6)
            for name, e in order:
                gbps[name] += measure.throughput(e.url + blob_path, BLOB_SIZE, 8, 1)
        lines = [f"# Hit path: {args.before[:12]} (before) and this tree (after), one run",
                 "", f"{args.rounds} interleaved rounds (each version first every other round); wrk -t2 -c32 -d{args.seconds}s; "
                 "8 parallel curl of one warm 128 MiB blob; access logs on (to files).", "",
                 "| measure | before | after | after/before |", "|---|---|---|---|"]
        for kind in paths:
            b, a = (measure.median(rps[kind, n]) for n in ("before", "after"))
            lines.append(f"| (b) manifest by {kind}, req/s | {b:,.0f} | {a:,.0f} | {a / b:.3f}x |")
            b, a = (measure.median(cpu_us[kind, n]) for n in ("before", "after"))
            lines.append(f"| (b) manifest by {kind}, server CPU µs/request | {b:.0f} | {a:.0f} | "
                         f"{a / b:.3f}x |")
        b, a = measure.median(gbps["before"]), measure.median(gbps["after"])
        lines.append(f"| (a) warm blob, GB/s | {b:.2f} | {a:.2f} | {a / b:.3f}x |")
        lines += ["", "All rounds: " + "; ".join(
            f"{k[0]} {k[1]} [{', '.join(f'{x:,.0f}' for x in v)}]" for k, v in rps.items())
            + "; CPU µs/request " + "; ".join(
            f"{k[0]} {k[1]} [{', '.join(f'{x:.0f}' for x in v)}]" for k, v in cpu_us.items())
            + "; blob " + "; ".join(f"{n} [{', '.join(f'{x:.2f}' for x in v)}]"
                                     for n, v in gbps.items()), ""]
        report = "\n".join(lines)
        print(report)
        if args.out:
            args.out.write_text(report)
        return 0
    finally:
        for e in edges.values():
            e.stop()
        up.cleanup()


if __name__ == "__main__":
    sys.exit(main())
