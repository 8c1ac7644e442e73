"""A real Prometheus (Debian `prometheus`) on loopback, scraping the targets it is
given every second, with the repository's alert rules loaded; queried over its HTTP API."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from .ports import free_port, wait_http
from .procs import stop_process

RULES = Path(__file__).parent.parent.parent / "deploy" / "prometheus" / "alerts.yaml"


class Prometheus:
    def __init__(self, workdir: Path, targets: list[str], job: str = "edgecache") -> None:
        self.dir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}]}))
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Prometheus":
        self.proc = subprocess.Popen(
            [shutil.which("prometheus") or "prometheus", f"--config.file={self.config}",
             f"--storage.tsdb.path={self.dir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=open(self.dir / "prometheus.log", "ab"), stderr=subprocess.STDOUT)
        wait_http(self.url + "/-/ready", 30)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, 10)

    def api(self, path: str, **params: str) -> dict:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            doc = json.loads(r.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def wait_for(self, expr: str, timeout: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.query(expr)
            if got or time.monotonic() > deadline:
                return got
            time.sleep(0.5)

    def __enter__(self) -> "Prometheus":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
