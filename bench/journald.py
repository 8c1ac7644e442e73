#!/usr/bin/env python3
"""Cached manifests with the access log going to journald, as a cache box runs.

    python3 bench/journald.py [--seconds 8] [--rounds 3] [--out FILE]

edgecache installed into a Debian root and started by its own unit under systemd as
PID 1 (systemd-nspawn, the host's network), stdout to journald's stream; beside it,
on the host, edgecache with its access log written to a file, and the bare aiohttp
handler (the limit). One Distribution registry upstream for both caches. Interleaved
rounds of `wrk -t2 -c32` by digest and by tag; then every request wrk counted is
looked for in the journal. Needs root, debootstrap and systemd-nspawn; the Debian
root is made once per machine (tests/support/nspawn.py), about a minute.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import measure  # noqa: E402
import peers  # noqa: E402
from tests.support import nspawn  # noqa: E402
from tests.support.images import MANIFEST_TYPES, make_image, push  # noqa: E402
from tests.support.ports import wait_http  # noqa: E402

REPO = "demo/app"
ACCEPT = {"Accept": ", ".join(MANIFEST_TYPES)}


def log(msg: str) -> None:
    print(f"[journald {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def boot_box(work: Path, upstream_url: str) -> tuple[nspawn.Machine, str]:
    """The unit as shipped, with the config of the host's cache (peers.edge_config)."""
    root = nspawn.copy_of(nspawn.BASE, work / "root")
    nspawn.install_edgecache(root, ROOT)
    doc = peers.edge_config(Path("/unused"), upstream_url)
    del doc["data_dir"]                        # the unit's StateDirectory, as on a box
    conf = root / "etc/edgecache"
    conf.mkdir(parents=True)
    (conf / "config.yaml").write_text(yaml.safe_dump(doc))
    box = nspawn.Machine(root, name="edgecache-bench").boot()
    url = f"http://{doc['listen']}"
    try:
        box.run("systemctl", "start", "edgecache.service")
        wait_http(url + "/_edgecache/health", 30)
    except BaseException:
        box.stop()
        raise
    return box, url


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=8, help="per wrk run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, help="also write the report here")
    args = ap.parse_args()
    why = nspawn.available()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="journald-", dir="/var/tmp") as tmp, \
            contextlib.ExitStack() as stack:
        work = Path(tmp)
        up = peers.start_upstream(work)
        stack.callback(up.stop)
        img = make_image(7, layers=2, layer_size=4096)
        digest = push(up.url, REPO, "v1", img)
        log("booting the box")
        box, box_url = boot_box(work, up.url)
        stack.callback(box.stop)
        host = peers.start_edge(work, up, "host", log_to=work / "host-access.log")
        stack.callback(host.stop)
        paths = {"digest": f"/v2/{REPO}/manifests/{digest}", "tag": f"/v2/{REPO}/manifests/v1"}
        status, body = measure.http_get(host.url + paths["digest"], ACCEPT)
        bare = peers.Bare(work / "bare", body).start()
        stack.callback(bare.stop)
        targets = {"bare aiohttp": bare.url, "edgecache, log to a file": host.url,
                   "edgecache under systemd, log to journald": box_url}
        for name, url in targets.items():
            for path in paths.values():
                status, got = measure.http_get(url + path, ACCEPT)
                if status != 200 or "sha256:" + hashlib.sha256(got).hexdigest() != digest:
                    raise RuntimeError(f"{name} {path}: HTTP {status} or wrong manifest")
        time.sleep(1.1)                        # the journal count starts after the warm-up
        journal_since = box.run("date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
        rps: dict[tuple[str, str], list[float]] = {}
        to_journal = 0
        for r in range(args.rounds):
            log(f"round {r + 1} of {args.rounds}")
            order = list(targets.items())
            order = order[r % len(order):] + order[:r % len(order)]   # each first in turn
            for kind, path in paths.items():
                for name, url in order:
                    res = measure.wrk(url + path, args.seconds, ACCEPT)
                    if res.non2xx or res.socket_errors != "none":
                        raise RuntimeError(f"{name} {kind}: {res.non2xx} non-2xx, "
                                           f"{res.socket_errors} socket errors")
                    rps.setdefault((kind, name), []).append(res.rps)
                    if url == box_url:
                        to_journal += res.requests

        def in_journal() -> int:
            out = box.run("sh", "-c", f"journalctl -u edgecache -o cat --no-pager --since "
                                      f"'{journal_since}' | grep -c '\"path\":\"/v2/{REPO}/manifests/'",
                          check=False, timeout=300).stdout.strip()
            return int(out or 0)
        journal, settled = in_journal(), 0
        while settled < 3:                     # until journald has taken everything
            time.sleep(1)
            now = in_journal()
            settled = settled + 1 if now == journal else 0
            journal = now
        suppressed = box.run("sh", "-c", "journalctl -u systemd-journald --no-pager | "
                                         "grep -c Suppressed", check=False).stdout.strip()
        lines = [f"# Cached manifests, access log to journald under systemd, one run ({time.strftime('%Y-%m-%d')})",
                 "", f"{args.rounds} interleaved rounds (each target first in turn); `wrk -t2 -c32 -d{args.seconds}s`; "
                 "the unit as shipped (systemd/edgecache.service) in a Debian root booted with "
                 "systemd-nspawn on the host's network; ratios within this run.", "",
                 "| by | bare aiohttp req/s | edgecache, log to a file | /bare | edgecache under systemd, "
                 "log to journald | /bare | journald/file |", "|---|---|---|---|---|---|---|"]
        for kind in paths:
            b, f, j = (measure.median(rps[kind, n]) for n in targets)
            lines.append(f"| {kind} | {b:,.0f} | {f:,.0f} | {f / b:.2f}x | {j:,.0f} | {j / b:.2f}x | "
                         f"{j / f:.2f}x |")
        lines += ["", f"Requests wrk counted to the box: {to_journal:,} (not those in flight when "
                  f"each run stopped, up to 32 a run); access lines in its journal: {journal:,}; "
                  f"journald's 'Suppressed' notices: {suppressed or 0}.", "", "All rounds: " + "; ".join(
                      f"{k[0]} {k[1]} [{', '.join(f'{x:,.0f}' for x in v)}]" for k, v in rps.items()), ""]
        report = "\n".join(lines)
        print(report)
        if args.out:
            args.out.write_text(report)
    if journal < to_journal or suppressed not in ("", "0"):
        print("access lines are missing from the journal", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
