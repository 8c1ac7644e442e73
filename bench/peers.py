"""The servers the benchmark compares, all on 127.0.0.1, all under one work dir.

- upstream: a CNCF Distribution registry holding the images (tests/support Registry)
- proxy:    Distribution in pull-through proxy mode in front of the upstream (the peer)
- nginx:    serves one blob file from disk with sendfile (the practical limit for blobs);
            also over TLS
- bare:     a bare aiohttp handler on uvloop answering one manifest (the limit for small answers)
- edge:     `python3 -m edgecache serve` as a real process on uvloop
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.edge import EdgeProcess, make_config
from tests.support.ports import free_port, wait_http
from tests.support.procs import stop_process
from tests.support.registry import Registry

UPSTREAM_NAME = "central.example"

NGINX_CONF = """\
daemon off;
worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    sendfile on;
    tcp_nopush on;
    access_log {dir}/access.log;
    default_type application/octet-stream;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port}{ssl};
        {tls}
        root {dir}/www;
        # Any /v2/<name>/blobs/<digest> is the one blob file.
        location ~ "^/v2/.+/blobs/sha256:[0-9a-f]{{64}}$" {{ rewrite ^ /blob break; }}
    }}
}}
"""


class _Process:
    """A server the bench starts as a child process in its own directory, waited for on
    `ready` (a path), stopped with SIGTERM; its stderr (and `logs`) told if it does not start."""

    dir: Path
    url: str
    proc: subprocess.Popen | None = None

    def _launch(self, cmd: list[str], ready: str, logs: tuple[Path, ...] = ()) -> None:
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "stderr.log", "ab"))
        try:
            wait_http(self.url + ready, 10)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"{cmd[0]} did not start:\n" + "".join(
                p.read_text() for p in (self.dir / "stderr.log", *logs))) from None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, 10)                # SIGTERM: nginx's fast shutdown of master and workers


class Nginx(_Process):
    """nginx (master + 2 workers) serving `blob_file` for every /v2/<name>/blobs/<digest>;
    over TLS with `tls` (certificate, key)."""

    def __init__(self, workdir: Path, blob_file: Path, tls: tuple[Path, Path] | None = None) -> None:
        self.dir = workdir
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        (self.dir / "www").mkdir(parents=True)
        (self.dir / "tmp").mkdir()
        os.link(blob_file, self.dir / "www" / "blob")
        # Workers run as nobody: they need to reach and read the file.
        for p in (self.dir, self.dir / "www", self.dir / "www" / "blob"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        self.conf = self.dir / "nginx.conf"
        # TLS as nginx ships it (OpenSSL, its default ciphers; sendfile does not apply), with
        # TLS 1.3 on, which nginx 1.22 leaves off: both sides then negotiate TLS 1.3 with
        # TLS_AES_256_GCM_SHA384, as edgecache's listener does (1.2 would pick ECDHE AES256-GCM).
        self.conf.write_text(NGINX_CONF.format(
            dir=self.dir, port=self.port, ssl=" ssl" if tls else "",
            tls=(f"ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]}; "
                 "ssl_protocols TLSv1.2 TLSv1.3;") if tls else ""))

    def start(self) -> "Nginx":
        self._launch(["nginx", "-p", str(self.dir), "-e", str(self.dir / "error.log"),
                      "-c", str(self.conf)], "/", (self.dir / "error.log",))
        return self


class Bare(_Process):
    """bench/bare.py: every GET answers `body` (a manifest); no access log."""

    def __init__(self, workdir: Path, body: bytes) -> None:
        workdir.mkdir(parents=True)
        (workdir / "body.json").write_bytes(body)
        self.dir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> "Bare":
        self._launch([sys.executable, str(Path(__file__).with_name("bare.py")),
                      "--port", str(self.port), "--body", str(self.dir / "body.json")], "/v2/")
        return self


def start_upstream(workdir: Path) -> Registry:
    return Registry(workdir=workdir / "upstream").start()


def start_proxy(workdir: Path, upstream: Registry) -> Registry:
    return Registry(upstream=upstream.url, workdir=workdir / "proxy").start()


def registry_pid(reg: Registry) -> int | None:
    return reg.pid


def edge_config(data_dir: Path, upstream_url: str, **extra) -> dict:
    """The config every benchmarked edgecache runs with (a manifest within tag_ttl all run)."""
    return make_config(data_dir, {UPSTREAM_NAME: upstream_url}, default=UPSTREAM_NAME,
                       tag_ttl="1h", cache={"max_size": "16GiB"},
                       upstream_timeout={"connect": "2s", "read": "60s"}, **extra)


def start_edge(workdir: Path, upstream: Registry, name: str = "edge", *, log_to: Path | None = None,
               **extra) -> EdgeProcess:
    """`log_to`: where the access log (stdout) goes; a file in its directory by default."""
    d = workdir / name
    d.mkdir()
    doc = edge_config(d / "data", upstream.url, **extra)
    scheme = "https" if "tls" in extra else "http"
    return EdgeProcess(d, doc, stdout=log_to, url=f"{scheme}://{doc['listen']}").start()
