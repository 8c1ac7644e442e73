#!/usr/bin/env python3
"""edgecache side by side with Distribution (proxy mode) and nginx, on loopback, in one run.

    python3 bench/run.py [--quick] [--out docs/benchmarks.md]

Starts an upstream Distribution registry, Distribution as a pull-through proxy, nginx serving
the blob file, and edgecache as a real process; measures (a) warm blob throughput, (b) manifest
requests/s, (c) concurrent cold blob requests, (d) a cold image pull, (e) peak RSS; writes a
Markdown report to --out and prints it. See bench/README.md.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import measure  # noqa: E402  (bench/ is the script's own directory)
import peers    # noqa: E402
from wan import NS as wan_ns_name, Wan  # noqa: E402
from tests.support.certs import make_certs  # noqa: E402
from tests.support.registry import Registry  # noqa: E402
from tests.support.images import MANIFEST_TYPES, OCI_LAYER, Blob, make_image, push, push_blob  # noqa: E402
from tests.support.supplychain import Key, attach, referrer, sign_into  # noqa: E402

MiB = 1 << 20
BLOB_SIZE = 128 * MiB
REPO = "demo/app"
COLD_REPO = "demo/cold"
ACCEPT = {"Accept": ", ".join(MANIFEST_TYPES)}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def met(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def table(headers: list[str], rows: list[list[object]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out + [""]


def new_blob(reg_url: str, repo: str, save_to: Path | None = None) -> str:
    """Push a fresh 128 MiB blob of random bytes; returns its digest."""
    blob = Blob(OCI_LAYER, os.urandom(BLOB_SIZE))
    push_blob(reg_url, repo, blob)
    if save_to is not None:
        save_to.write_bytes(blob.data)
    return blob.digest


def wait_fills_done(edge_url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, body = measure.http_get(edge_url + "/_edgecache/status", timeout=10)
        if not json.loads(body)["fills_in_progress"]:
            return
        time.sleep(0.1)
    raise TimeoutError("edgecache fills did not finish")


# ---- the measurements ------------------------------------------------------------------------------------------

def blob_throughput(urls: dict[str, str], edge_url: str, rounds: int, clients: int = 8) -> list[str]:
    """(a) 8 parallel curl x one warm 128 MiB blob; rounds interleaved across servers; median round."""
    for name in ("proxy", "edgecache"):          # warm the caches (twice: the first GET fills)
        for _ in range(2):
            _, res = measure.curl_parallel([urls[name]])
            measure.check_fetches(res, BLOB_SIZE, f"warm-up {name}")
    wait_fills_done(edge_url)
    sendfile0 = measure.prom_value(edge_url, "edgecache_sendfile_bytes_total")
    rates: dict[str, list[float]] = {n: [] for n in urls}
    for _ in range(rounds):
        for name, url in urls.items():
            rates[name] += measure.throughput(url, BLOB_SIZE, clients, 1)
    sendfile_bytes = measure.prom_value(edge_url, "edgecache_sendfile_bytes_total") - sendfile0
    sent = rounds * clients * BLOB_SIZE
    share = sendfile_bytes / sent
    med = {n: measure.median(r) for n, r in rates.items()}
    e_ratio, p_ratio = med["edgecache"] / med["nginx"], med["proxy"] / med["nginx"]
    out = [f"## (a) Warm blob throughput: {clients} parallel clients x one 128 MiB blob",
           "",
           f"Aggregate GB/s (10^9 bytes/s) of {clients} concurrent `curl` downloads of the same cached blob; "
           f"{rounds} rounds interleaved across the servers, median round shown (all rounds in brackets).",
           ""]
    out += table(
        ["nginx GB/s", "proxy GB/s", "edgecache GB/s", "edgecache/nginx", "proxy/nginx", "target", "met?"],
        [[f"{med['nginx']:.2f}", f"{med['proxy']:.2f}", f"{med['edgecache']:.2f}",
          f"{e_ratio:.2f}x", f"{p_ratio:.2f}x", "edgecache >= 1.0x nginx", met(e_ratio >= 1.0)]])
    out += table(["server", "rounds GB/s"],
                 [[n, "[" + ", ".join(f"{x:.2f}" for x in r) + "]"] for n, r in rates.items()])
    out += table(["edgecache bytes sent", "of which by sendfile (edgecache_sendfile_bytes_total)",
                  "sendfile share", "target", "met?"],
                 [[sent, int(sendfile_bytes), f"{share:.1%}", "~100% (kernel zero-copy path)",
                   met(share >= 0.99)]])
    SUMMARY.append(["(a) warm blob GB/s, edgecache/nginx", ">=1.0x", f"{e_ratio:.2f}x",
                    met(e_ratio >= 1.0)])
    SUMMARY.append(["(a) sendfile share of edgecache blob bytes", "~100%", f"{share:.1%}", met(share >= 0.99)])
    return out


def tls_throughput(servers: dict[str, tuple[str, int]], rounds: int, clients: int = 8) -> list[str]:
    """(a, TLS) the same warm blob over TLS: nginx with TLS (the limit) and edgecache's `tls:`
    listener, same certificate, rounds interleaved, median; and each server's CPU per GB
    (its process tree's user + system time), which the shared cores blur less."""
    for _ in range(2):                       # warm: the first GET fills
        _, res = measure.curl_parallel([servers["edgecache"][0]])
        measure.check_fetches(res, BLOB_SIZE, "warm-up edgecache TLS")
    rates: dict[str, list[float]] = {n: [] for n in servers}
    cpu = dict.fromkeys(servers, 0.0)
    for _ in range(rounds):
        for name, (url, pid) in servers.items():
            before = measure.cpu_seconds(pid)
            rates[name] += measure.throughput(url, BLOB_SIZE, clients, 1)
            cpu[name] += measure.cpu_seconds(pid) - before
    session = {n: measure.tls_session(url) for n, (url, _) in servers.items()}
    ulps = Path("/proc/sys/net/ipv4/tcp_available_ulp")
    ktls = ("is loaded here but used by neither" if ulps.exists() and "tls" in ulps.read_text().split()
            else "is not offered by this kernel: no `tls` in tcp_available_ulp")
    gb = rounds * clients * BLOB_SIZE / 1e9
    per_gb = {n: c / gb for n, c in cpu.items()}
    med = {n: measure.median(r) for n, r in rates.items()}
    ratio = med["edgecache"] / med["nginx"]
    SUMMARY.append(["(a, TLS) warm blob GB/s over TLS, edgecache/nginx", ">=0.9x", f"{ratio:.2f}x",
                    met(ratio >= 0.9)])
    out = [f"## (a, TLS) Warm blob throughput over TLS: {clients} parallel clients x one 128 MiB blob",
           "",
           "As (a), over TLS: nginx (`listen ... ssl`, its default ciphers, TLS 1.3 enabled) and "
           "edgecache's `tls:` listener with the same RSA-2048 certificate; what curl negotiated: "
           f"nginx {session['nginx']}, edgecache {session['edgecache']}; `curl -k`; {rounds} rounds "
           "interleaved, median. Neither can use "
           f"sendfile: the bytes are encrypted in user space (the kernel's TLS, which would let both, {ktls}). "
           "CPU s/GB: the server's user + system CPU over all its rounds "
           "per GB sent (nginx: master and its 2 workers; edgecache: one event loop and its threads).",
           ""]
    out += table(["nginx TLS GB/s", "edgecache TLS GB/s", "edgecache/nginx", "nginx CPU s/GB",
                  "edgecache CPU s/GB", "target", "met?"],
                 [[f"{med['nginx']:.2f}", f"{med['edgecache']:.2f}", f"{ratio:.2f}x",
                   f"{per_gb['nginx']:.2f}", f"{per_gb['edgecache']:.2f}",
                   "edgecache >= 0.9x nginx", met(ratio >= 0.9)]])
    out += table(["server", "rounds GB/s"],
                 [[n, "[" + ", ".join(f"{x:.2f}" for x in r) + "]"] for n, r in rates.items()])
    return out


def manifest_rps(bases: dict[str, str], digest: str, seconds: int, rounds: int) -> list[str]:
    """(b) wrk -t2 -c32 on a manifest by digest and by tag: the upstream and the proxy (peers),
    a bare aiohttp handler (the limit), edgecache with its access log written to a file and
    edgecache with it discarded; rounds interleaved, median."""
    paths = {"digest": f"/v2/{REPO}/manifests/{digest}", "tag": f"/v2/{REPO}/manifests/v1"}
    for kind, path in paths.items():               # warm, and prove every server answers 200 with it
        for name, base in bases.items():
            status, body = measure.http_get(base + path, ACCEPT)
            if status != 200 or "sha256:" + hashlib.sha256(body).hexdigest() != digest:
                raise RuntimeError(f"{name} {path}: HTTP {status} or wrong manifest")
    res: dict[tuple[str, str], list[measure.WrkResult]] = {}
    for r in range(rounds):
        order = list(bases.items()) if r % 2 == 0 else list(reversed(bases.items()))
        for kind, path in paths.items():
            for name, base in order:
                res.setdefault((kind, name), []).append(measure.wrk(base + path, seconds, ACCEPT))
    rps = {k: measure.median([x.rps for x in v]) for k, v in res.items()}
    targets = {"digest": 6.0, "tag": 15.0}
    edge, quiet = "edgecache", "edgecache (log discarded)"
    rows, limit_rows, detail = [], [], []
    for kind in paths:
        u, p, b, e, q = (rps[kind, n] for n in ("upstream", "proxy", "bare aiohttp", edge, quiet))
        ratio = e / p
        rows.append([kind, f"{u:,.0f}", f"{p:,.0f}", f"{e:,.0f}", f"{ratio:.1f}x",
                     f"{e / u:.1f}x", f">= {targets[kind]:.0f}x proxy", met(ratio >= targets[kind])])
        SUMMARY.append([f"(b) manifest by {kind} req/s, edgecache/proxy", f">={targets[kind]:.0f}x",
                        f"{ratio:.1f}x", met(ratio >= targets[kind])])
        limit_rows.append([kind, f"{b:,.0f}", f"{e:,.0f}", f"{e / b:.2f}x", f"{q:,.0f}", f"{q / b:.2f}x",
                           ">= 0.6x bare, log to a file", met(e / b >= 0.6)])
        SUMMARY.append([f"(b) manifest by {kind} req/s, edgecache (access log to a file)/bare aiohttp",
                        ">=0.6x", f"{e / b:.2f}x", met(e / b >= 0.6)])
        for n in bases:
            runs = res[kind, n]
            detail.append([kind, n, f"{sum(x.requests for x in runs):,}", sum(x.non2xx for x in runs),
                           "; ".join(sorted({x.socket_errors for x in runs})),
                           "/".join(f"{x.p50_ms:.2f}" if x.p50_ms is not None else "?" for x in runs),
                           "[" + ", ".join(f"{x.rps:,.0f}" for x in runs) + "]"])
    out = ["## (b) Manifest requests per second",
           "",
           f"`wrk -t2 -c32 -d{seconds}s` with `Accept: {ACCEPT['Accept']}`; by digest "
           f"(`/v2/{REPO}/manifests/sha256:...`) and by tag (`/v2/{REPO}/manifests/v1`, edgecache within "
           f"its tag_ttl of 1h); {rounds} rounds, the servers' order reversed every other round, median "
           "req/s. The upstream registry itself is a reference. `edgecache` writes its access log "
           "(stdout) to a file, as in production; `edgecache (log discarded)` is a second process with "
           "stdout on /dev/null. The limit is `bench/bare.py`: one aiohttp handler on uvloop answering "
           "the same manifest bytes with the same headers, no routing, no checks, no log.",
           ""]
    out += table(["by", "upstream req/s", "proxy req/s", "edgecache req/s", "edgecache/proxy",
                  "edgecache/upstream", "target", "met?"], rows)
    out += table(["by", "bare aiohttp req/s", "edgecache (log to file) req/s", "/bare",
                  "edgecache (log discarded) req/s", "/bare", "target", "met?"], limit_rows)
    out += table(["by", "server", "requests", "Non-2xx or 3xx", "socket errors", "p50 latency ms",
                  "rounds req/s"], detail)
    return out


def supply_chain(bases: dict[str, str], digest: str, seconds: int, rounds: int) -> list[str]:
    """(f) Manifests by tag with an enforcing signature rule against the same cache
    without one (rounds interleaved, median), and referrers answers from cache."""
    tag_path, ref_path = f"/v2/{REPO}/manifests/v1", f"/v2/{REPO}/referrers/{digest}"
    for name, base in bases.items():               # warm: the verification, the referrers answer
        for path in (tag_path, ref_path):
            status, body = measure.http_get(base + path, ACCEPT)
            if status != 200:
                raise RuntimeError(f"{name} {path}: HTTP {status}: {body[:300]!r}")
    res: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for name, base in bases.items():
            for kind, path in (("tag", tag_path), ("referrers", ref_path)):
                r = measure.wrk(base + path, seconds, ACCEPT)
                if r.non2xx:
                    raise RuntimeError(f"{name} {path}: {r.non2xx} non-2xx answers")
                res.setdefault((kind, name), []).append(r.rps)
    med = {k: sorted(v)[len(v) // 2] for k, v in res.items()}
    plain, policed = med["tag", "edgecache"], med["tag", "edgecache+policy"]
    ratio = policed / plain
    SUMMARY.append(["(f) manifest by tag req/s, enforcing policy/none", ">=0.90x", f"{ratio:.2f}x",
                    met(ratio >= 0.9)])
    rows = [["manifest by tag", f"{plain:,.0f}", f"{policed:,.0f}", f"{ratio:.2f}x", ">= 0.90x",
             met(ratio >= 0.9)],
            ["referrers (from cache)", f"{med['referrers', 'edgecache']:,.0f}",
             f"{med['referrers', 'edgecache+policy']:,.0f}",
             f"{med['referrers', 'edgecache+policy'] / med['referrers', 'edgecache']:.2f}x", "-", "-"]]
    out = ["## (f) Signature policy and referrers",
           "",
           f"`wrk -t2 -c32 -d{seconds}s`, {rounds} rounds interleaved, median. Two edgecache processes "
           "on the same upstream: one without a policy, one with an enforcing rule over the "
           "repository (cosign ECDSA key; the image signed in a `.sig` tag). The image's referrers "
           "(an SBOM, found through the tag schema: Distribution has no referrers API) are asked "
           "within tag_ttl, so both are answered from the cache.",
           ""]
    out += table(["request", "edgecache req/s", "edgecache+policy req/s", "policy/none", "target",
                  "met?"], rows)
    return out


def settled_count(upstream, digest: str, quiet: float = 0.5, timeout: float = 10) -> int:
    """Upstream GETs of a blob, once the count stopped moving: a request is logged when it ends,
    and Distribution's proxy stores a blob locally with its own GET in the background."""
    deadline = time.monotonic() + timeout
    n = upstream.count("GET", rf"/v2/.*/blobs/{digest}")
    while time.monotonic() < deadline:
        time.sleep(quiet)
        m = upstream.count("GET", rf"/v2/.*/blobs/{digest}")
        if m == n:
            break
        n = m
    return n


def cold_blobs(upstream, bases: dict[str, str], digests: dict[str, tuple[str, str]],
               sampler: measure.RssSampler, n: int = 20, wan: str | None = None) -> list[str]:
    """(c) n concurrent curl of one never-fetched blob vs one curl of another never-fetched blob.

    Then the same two fetches straight from the upstream, as the floor this machine allows;
    and (on loopback) edgecache's n clients again once the blob is cached: what n copies cost
    here with no fill at all, the least wall(n) can be.
    """
    rows = []
    walls20: dict[str, float] = {}
    where = f"over a {wan} WAN" if wan else "on loopback"
    direct = "upstream (direct, reference)"
    for name, base in [*bases.items(), (direct, upstream.url)]:
        d1, d20 = digests["proxy" if name == direct else name]   # the upstream has no cache to warm
        sampler.phase = f"(c) cold x1 via {name}"
        wall1, res1 = measure.curl_parallel([f"{base}/v2/{COLD_REPO}/blobs/{d1}"])
        measure.check_fetches(res1, BLOB_SIZE, f"cold x1 {name}")
        sampler.phase = f"(c) cold x{n} via {name}"
        wall20, res20 = measure.curl_parallel([f"{base}/v2/{COLD_REPO}/blobs/{d20}"] * n)
        measure.check_fetches(res20, BLOB_SIZE, f"cold x{n} {name}")
        ratio = wall20 / wall1
        walls20[name] = wall20
        if name == direct:
            rows.append([name, "-", f"{wall20:.2f}", "-", f"{wall1:.2f}", f"{ratio:.2f}x", "-", "-"])
            # What 20 clients of one blob cost the machine at all: edgecache's wall(20) next to it.
            SUMMARY.append([f"(c) edgecache wall({n}) / direct-from-upstream wall({n})"
                            + (f" over a {wan} WAN" if wan else " on loopback"), "(reference)",
                            f"{walls20['edgecache'] / wall20:.2f}x", "-"])
            continue
        gets1 = settled_count(upstream, d1)
        gets20 = settled_count(upstream, d20)
        if name == "edgecache":
            ok = gets20 == 1 and ratio <= 1.5
            target, verdict = "1 upstream GET, wall(20) <= 1.5x wall(1)", met(ok)
            SUMMARY.append([f"(c) {n} cold requests {where}: upstream GETs", "1", gets20, met(gets20 == 1)])
            SUMMARY.append([f"(c) wall({n}) / wall(1) {where}", "<=1.5x", f"{ratio:.2f}x",
                            met(ratio <= 1.5)])
            cached = None if wan else floor_row(base, d20, n, wall1, sampler)
        else:
            target, verdict, cached = "-", "-", None
        rows.append([name, gets20, f"{wall20:.2f}", gets1, f"{wall1:.2f}", f"{ratio:.2f}x", target, verdict])
        if cached:
            rows.append(cached)
    if wan:
        out = [f"## (c, WAN) {n} concurrent cold requests for one 128 MiB blob over a {wan} WAN",
               "",
               f"The same measurement with the upstream registry in a network namespace whose only link "
               f"is a veth pair shaped to {wan} (tbf): every upstream byte crosses a WAN of known speed, "
               "as from a branch office, while the clients stay on loopback.",
               ""]
        out += table(["server", f"upstream GETs ({n})", f"wall({n}) s", "upstream GETs (1)", "wall(1) s",
                      f"wall({n})/wall(1)", "target", "met?"], rows)
        return out
    out = [f"## (c) {n} concurrent cold requests for one 128 MiB blob",
           "",
           f"{n} `curl` processes started together for a blob that server has never seen; upstream blob "
           "GETs counted in the upstream registry's access log. wall(1) is one cold fetch of another fresh "
           "128 MiB blob through the same server. The row 'the same blob cached' asks edgecache for the "
           f"{n} clients' blob again once it is stored: {n} copies handed out with no fill at all, over "
           "the same wall(1); no fill, however fast, brings wall(20)/wall(1) below that. The last row "
           "fetches the same two blobs straight from "
           f"the upstream registry: the {n}-vs-1 ratio the machine itself (loopback, clients, cores) allows.",
           ""]
    out += table(["server", f"upstream GETs ({n})", f"wall({n}) s", "upstream GETs (1)", "wall(1) s",
                  f"wall({n})/wall(1)", "target", "met?"], rows)
    return out


def floor_row(base: str, digest: str, n: int, wall1: float, sampler: measure.RssSampler) -> list:
    """n clients of a blob edgecache has cached: the copies with no fill at all, over the cold
    wall(1), the least wall(n)/wall(1) can be on loopback. (Over the WAN the cached copies never
    cross it: no floor of that ratio.)"""
    wait_fills_done(base)
    sampler.phase = f"(c) warm x{n} via edgecache"
    warm, res = measure.curl_parallel([f"{base}/v2/{COLD_REPO}/blobs/{digest}"] * n)
    measure.check_fetches(res, BLOB_SIZE, f"warm x{n} edgecache")
    SUMMARY.append([f"(c) edgecache cached wall({n}) / cold wall(1) on loopback: a floor "
                    f"({n} copies, no fill at all)", "(reference)", f"{warm / wall1:.2f}x", "-"])
    return ["edgecache, the same blob cached", "-", f"{warm:.2f}", "-", f"{wall1:.2f}",
            f"{warm / wall1:.2f}x", "-", "-"]


def cold_pull(refs: dict[str, str], dest: Path, layers: int, layer_mib: int) -> list[str]:
    """(d) skopeo copy of a never-pulled multi-layer image, directly and through each cache."""
    secs = {}
    dest.mkdir(exist_ok=True)
    for name, ref in refs.items():
        secs[name] = measure.skopeo_copy(ref, dest / name)
        shutil.rmtree(dest / name, ignore_errors=True)
    rows = [[n, f"{s:.2f}", f"{s / secs['direct']:.2f}x"] for n, s in secs.items()]
    out = [f"## (d) Cold pull of a {layers}-layer image ({layers} x {layer_mib} MiB)",
           "",
           "`skopeo copy --src-tls-verify=false docker://HOST/REPO:v1 dir:...`, a different (never pulled) "
           "image for each, so every pull is cold; `direct` pulls from the upstream registry itself.",
           ""]
    out += table(["via", "seconds", "ratio to direct"], rows)
    return out


def peak_rss(sampler: measure.RssSampler, hwm: dict[str, int]) -> list[str]:
    """(e) sampled peak of summed VmRSS per process tree, and summed VmHWM at the end."""
    rows = []
    for name in sampler.pids:
        peak, h = sampler.peak_kib[name] / 1024, hwm[name] / 1024
        if name.startswith("edgecache"):
            target, verdict = "<= 64 MiB", met(max(peak, h) <= 64)
            SUMMARY.append([f"(e) {name} peak RSS (VmHWM)", "<=64 MiB", f"{max(peak, h):.1f} MiB",
                            met(max(peak, h) <= 64)])
        else:
            target, verdict = "-", "-"
        rows.append([name, f"{peak:.1f}", f"{h:.1f}", target, verdict])
    out = ["## (e) Peak RSS over the whole run",
           "",
           f"VmRSS of each server's process tree (nginx: master + workers) sampled every 100 ms "
           f"({sampler.samples} samples), and VmHWM read at the end (for nginx the sum of each process's "
           "own peak). The upstream's figure includes receiving the pushes.",
           ""]
    out += table(["server", "peak sampled RSS MiB", "VmHWM MiB", "target", "met?"], rows)
    out += ["Peak sampled RSS (MiB) during each phase of the run:", ""]
    out += table(["phase", *sampler.pids],
                 [[phase, *(f"{peaks[n] / 1024:.1f}" for n in sampler.pids)]
                  for phase, peaks in sampler.phase_peak_kib.items()])
    return out


# ---- orchestration ---------------------------------------------------------------------------------------------

SUMMARY: list[list[object]] = []


def _first_line(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def machine_info(quick: bool) -> list[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor() or "?")
    rows = [["date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")],
            ["mode", "quick" if quick else "full"],
            ["nproc", os.cpu_count()], ["CPU", cpu], ["kernel", platform.release()],
            ["Python", platform.python_version()], ["aiohttp", version("aiohttp")],
            ["uvloop", version("uvloop")], ["edgecache", version("edgecache")],
            ["nginx", _first_line(["nginx", "-v"])],
            ["Distribution", _first_line(["docker-registry", "--version"])],
            ["curl", _first_line(["curl", "--version"])], ["wrk", _first_line(["wrk", "--version"])],
            ["skopeo", _first_line(["skopeo", "--version"])]]
    return ["## Machine", ""] + table(["", ""], rows)


def run(quick: bool, work: Path, stack: contextlib.ExitStack, wan_rate: str | None) -> str:
    rounds, wrk_secs = (3, 2) if quick else (5, 4)
    layers, layer_mib = 6, 16
    info = machine_info(quick)

    log("starting upstream, proxy, edgecache, nginx")
    upstream = peers.start_upstream(work)
    stack.callback(upstream.stop)
    proxy = peers.start_proxy(work, upstream)
    stack.callback(proxy.stop)
    edge = peers.start_edge(work, upstream)
    stack.callback(edge.stop)
    quiet = peers.start_edge(work, upstream, name="edge-quiet", log_to=Path(os.devnull))
    stack.callback(quiet.stop)
    certs = make_certs(work / "certs")
    for f in (work / "certs", *(work / "certs").iterdir()):
        f.chmod(0o755 if f.is_dir() else 0o644)       # nginx workers (nobody) read the key
    edge_tls = peers.start_edge(work, upstream, name="edge-tls", tls={
        "cert_file": str(certs.server_cert), "key_file": str(certs.server_key)})
    stack.callback(edge_tls.stop)
    blob_file = work / "blob.bin"
    warm_digest = new_blob(upstream.url, REPO, save_to=blob_file)
    nginx = peers.Nginx(work / "nginx", blob_file).start()
    stack.callback(nginx.stop)
    nginx_tls = peers.Nginx(work / "nginx-tls", blob_file, tls=(certs.server_cert, certs.server_key)).start()
    stack.callback(nginx_tls.stop)
    sampler = measure.RssSampler({"edgecache": edge.proc.pid, "edgecache (TLS)": edge_tls.proc.pid,
                                  "edgecache (log discarded)": quiet.proc.pid,
                                  "proxy": peers.registry_pid(proxy),
                                  "nginx": nginx.pid, "nginx (TLS)": nginx_tls.pid,
                                  "upstream": peers.registry_pid(upstream)})
    sampler.phase = "idle after start, pushes to upstream"
    sampler.start()
    stack.callback(sampler.stop)
    bases = {"upstream": upstream.url, "proxy": proxy.url, "edgecache": edge.url}

    log("pushing images and fresh blobs to the upstream")
    image = make_image(1, layers=1, layer_size=4096)
    manifest_digest = push(upstream.url, REPO, "v1", image)
    key = Key()
    sign_into(upstream.url, REPO, f"{peers.UPSTREAM_NAME}/{REPO}", manifest_digest, key)
    attach(upstream.url, REPO, referrer(Blob(image.media_type, image.manifest),
                                        "application/spdx+json", b'{"spdxVersion":"SPDX-2.3"}'))
    policed = peers.start_edge(work, upstream, name="edge-policy", policy=[{
        "name": "bench", "match": f"{peers.UPSTREAM_NAME}/{REPO}", "require": "signature",
        "keys": [str(key.write(work / "cosign.pub"))]}])
    stack.callback(policed.stop)
    cold = {n: (new_blob(upstream.url, COLD_REPO), new_blob(upstream.url, COLD_REPO))
            for n in ("proxy", "edgecache")}
    pull_refs = {}
    for seed, (name, base) in enumerate(bases.items(), start=100):
        repo = f"demo/pull-{name}"
        push(upstream.url, repo, "v1", make_image(seed, layers=layers, layer_size=layer_mib * MiB))
        pull_refs["direct" if name == "upstream" else name] = f"{base.removeprefix('http://')}/{repo}:v1"

    sections = []
    log("(a) warm blob throughput")
    sampler.phase = "(a) warm blobs (incl. first fill)"
    blob_path = f"/v2/{REPO}/blobs/{warm_digest}"
    sections += blob_throughput({"nginx": nginx.url + blob_path, "proxy": proxy.url + blob_path,
                                 "edgecache": edge.url + blob_path}, edge.url, rounds)
    log("(a, TLS) warm blob throughput over TLS")
    sampler.phase = "(a, TLS) warm blobs over TLS"
    sections += tls_throughput({"nginx": (nginx_tls.url + blob_path, nginx_tls.pid),
                                "edgecache": (edge_tls.url + blob_path, edge_tls.proc.pid)}, rounds)
    log("(b) manifest requests per second")
    sampler.phase = "(b) manifests"
    _, manifest_body = measure.http_get(edge.url + f"/v2/{REPO}/manifests/{manifest_digest}", ACCEPT)
    bare = peers.Bare(work / "bare", manifest_body).start()
    stack.callback(bare.stop)
    sections += manifest_rps({**bases, "bare aiohttp": bare.url, "edgecache (log discarded)": quiet.url},
                             manifest_digest, wrk_secs, rounds)
    log("(c) concurrent cold blob requests")
    sections += cold_blobs(upstream, {"proxy": proxy.url, "edgecache": edge.url}, cold, sampler)
    if wan_rate:
        log(f"(c, WAN) concurrent cold blob requests over a {wan_rate} WAN")
        wan = Wan(wan_rate).up()
        stack.callback(wan.down)
        far = Registry(workdir=work / "far-upstream", addr=wan.addr, netns=wan_ns_name).start()
        stack.callback(far.stop)
        far_proxy = Registry(upstream=far.url, workdir=work / "far-proxy").start()
        stack.callback(far_proxy.stop)
        far_edge = peers.start_edge(work, far, name="far-edge")
        stack.callback(far_edge.stop)
        far_cold = {n: (new_blob(far.url, COLD_REPO), new_blob(far.url, COLD_REPO))
                    for n in ("proxy", "edgecache")}
        sections += cold_blobs(far, {"proxy": far_proxy.url, "edgecache": far_edge.url}, far_cold,
                               sampler, wan=wan_rate)
    log("(d) cold image pull with skopeo")
    sampler.phase = "(d) cold pulls"
    sections += cold_pull(pull_refs, work / "skopeo", layers, layer_mib)
    log("(f) signature policy and referrers")
    sampler.phase = "(f) policy and referrers"
    sections += supply_chain({"edgecache": edge.url, "edgecache+policy": policed.url},
                             manifest_digest, wrk_secs, rounds)
    log("(e) peak RSS")
    hwm = sampler.hwm_kib()
    sampler.stop()
    sections += peak_rss(sampler, hwm)

    head = ["# edgecache benchmarks",
            "",
            "Generated by `python3 bench/run.py" + (" --quick" if quick else "") + "` (see bench/README.md). "
            "Everything runs on 127.0.0.1 on one machine in one run: an upstream Distribution registry, "
            "Distribution in proxy mode in front of it (the peer), nginx serving the blob file from disk "
            "with sendfile (the practical limit), and edgecache as a real `edgecache serve` process on "
            "uvloop. The clients (curl, wrk, skopeo) share the same cores, so absolute numbers are "
            "machine-bound; compare the ratios, which come from the same run.",
            ""]
    summary = ["## Targets", ""] + table(["measurement", "target", "measured", "met?"], SUMMARY)
    return "\n".join(head + info + summary + sections)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds, shorter wrk runs (~1-2 min)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--wan-rate", default="1gbit", help="rate of the shaped WAN link for (c, WAN)")
    ap.add_argument("--no-wan", action="store_true", help="skip (c, WAN): it needs root and ip netns")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # still run the cleanup below
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="edgecache-bench-"))
    work.chmod(0o755)                      # nginx workers (nobody) read the blob file in here
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        report = run(args.quick, work, stack, None if args.no_wan else args.wan_rate)
    report += f"\n_Whole run: {time.monotonic() - t0:.0f} s._\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
