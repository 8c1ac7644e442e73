"""Load generators and probes: parallel curl, wrk, skopeo, /metrics, RSS and CPU sampling."""
from __future__ import annotations

import os
import re
import ssl
import statistics
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Fetch:
    code: int
    size: int
    seconds: float


def curl_parallel(urls: list[str], timeout: float = 120) -> tuple[float, list[Fetch]]:
    """Start one curl per URL together; returns (wall seconds until the last one ended, results).
    https: any certificate (the bench's own, on loopback)."""
    cmd = ["curl", "-s", "-k", "-o", "/dev/null", "--max-time", str(int(timeout)),
           "-w", "%{http_code} %{size_download} %{time_total}"]
    t0 = time.monotonic()
    procs = [subprocess.Popen([*cmd, u], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for u in urls]
    try:
        outs = [p.communicate(timeout=timeout + 10)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    wall = time.monotonic() - t0
    results = []
    for out in outs:
        code, size, secs = out.split()
        results.append(Fetch(int(code), int(size), float(secs)))
    return wall, results


def tls_session(url: str) -> str:
    """The protocol and cipher curl (the bench's client) and the server at url agree on."""
    r = subprocess.run(["curl", "-s", "-k", "-v", "-o", "/dev/null", "--max-time", "10", url],
                       capture_output=True, text=True, timeout=20)
    m = re.search(r"SSL connection using (\S+) / (\S+)", r.stderr)
    return f"{m.group(1)} {m.group(2)}" if m else "?"


def check_fetches(results: list[Fetch], size: int, what: str) -> None:
    bad = [r for r in results if r.code != 200 or r.size != size]
    if bad:
        raise RuntimeError(f"{what}: {len(bad)} of {len(results)} fetches failed or were short: {bad[:3]}")


def throughput(url: str, size: int, clients: int, rounds: int) -> list[float]:
    """Aggregate GB/s (10^9 bytes/s) of `clients` parallel downloads of url, for each round."""
    rates = []
    for _ in range(rounds):
        wall, res = curl_parallel([url] * clients)
        check_fetches(res, size, url)
        rates.append(sum(r.size for r in res) / wall / 1e9)
    return rates


def median(xs: list[float]) -> float:
    return statistics.median(xs)


@dataclass
class WrkResult:
    rps: float
    requests: int
    non2xx: int
    socket_errors: str
    p50_ms: float | None


def _ms(text: str | None) -> float | None:
    if not text:
        return None
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return None
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def wrk(url: str, seconds: int, headers: dict[str, str] | None = None,
        threads: int = 2, conns: int = 32) -> WrkResult:
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency"]
    for k, v in (headers or {}).items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 30,
                         check=True).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:(.*)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    if not rps or not total:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    return WrkResult(float(rps.group(1)), int(total.group(1)), int(non2xx.group(1)) if non2xx else 0,
                     errors.group(1).strip() if errors else "none", _ms(p50.group(1) if p50 else None))


def skopeo_copy(ref: str, dest: Path, timeout: float = 180) -> float:
    """Seconds for `skopeo copy docker://ref dir:dest` (plain HTTP source)."""
    t0 = time.monotonic()
    r = subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"dir:{dest}"],
                       capture_output=True, text=True, timeout=timeout)
    secs = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"skopeo copy {ref} failed: {r.stderr.strip()}")
    return secs


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
        return r.status, r.read()


def prom_value(base_url: str, name: str) -> float:
    """Sum of every sample of metric `name` (any labels) on base_url/metrics."""
    _, body = http_get(base_url + "/metrics", timeout=10)
    total, found = 0.0, False
    for line in body.decode().splitlines():
        m = re.match(rf"{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", line)
        if m:
            total, found = total + float(m.group(2)), True
    if not found:
        raise KeyError(f"{name} not in {base_url}/metrics")
    return total


# ---- memory ----------------------------------------------------------------------------------------------------

def _status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (nginx master + workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU that pid and its descendants (nginx's workers) have used, from
    /proc/PID/stat: a cost per request or per byte, steadier than rates on a machine whose
    cores the load generator shares."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Every `interval` s, the summed VmRSS of each named process tree; keeps the peak per name."""

    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        self.pids = pids
        self.interval = interval
        self.peak_kib = {name: 0 for name in pids}
        self.phase = "start"                    # set by the caller; peaks are also kept per phase
        self.phase_peak_kib: dict[str, dict[str, int]] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            phase = self.phase_peak_kib.setdefault(self.phase, dict.fromkeys(self.pids, 0))
            for name, pid in self.pids.items():
                kib = sum(_status_kib(p, "VmRSS") for p in process_tree(pid))
                self.peak_kib[name] = max(self.peak_kib[name], kib)
                phase[name] = max(phase[name], kib)
            self.samples += 1
            self._stop.wait(self.interval)

    def start(self) -> "RssSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def hwm_kib(self) -> dict[str, int]:
        """VmHWM (the kernel's own peak RSS) summed over each tree; call before the servers stop."""
        return {name: sum(_status_kib(p, "VmHWM") for p in process_tree(pid))
                for name, pid in self.pids.items()}
