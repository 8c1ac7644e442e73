"""A real CNCF Distribution registry (Debian `docker-registry`) on loopback, with access-log counting.

The access log is Apache combined format written by gorilla/handlers, one line per request, e.g.
    127.0.0.1 - - [27/Nov/2026:22:12:40 +0000] "HEAD /v2/foo/bar/blobs/sha256:00.. HTTP/1.1" 404 157 "" "curl/7.88.1"
It is independent of `log.level`; logrus lines (`time="..." level=...`) are interleaved and ignored.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType

from .ports import free_port, wait_http
from .procs import stop_process

# Anchored on the combined-log shape so logrus lines (which also mention methods and URIs) never match.
_ACCESS = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d{3}) '
    r'(?P<size>\d+|-)'
)
# Requests to this prefix are our own log-flush markers; Distribution answers 404 and logs them.
_SYNC_PREFIX = "/__edgecache_sync/"


class Registry:
    """`docker-registry serve` on 127.0.0.1:<free port>; with `upstream` it is Distribution's own pull-through proxy
    (upstream_auth=(user, password) for an upstream that wants credentials at its token realm).

    Work files live in workdir (default: a temp dir removed on exit): config.yml, data/, registry.log.
    """

    def __init__(
        self,
        upstream: str | None = None,
        workdir: Path | str | None = None,
        port: int | None = None,
        upstream_auth: tuple[str, str] | None = None,
        addr: str = "127.0.0.1",
        netns: str | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        self.upstream = upstream
        self.addr = addr
        self.netns = netns                # run inside this network namespace (ip netns exec)
        self.upstream_auth = upstream_auth
        self.users = users                # htpasswd (bcrypt) Basic auth on every request
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="registry-"))
        self.port = port or free_port()
        self.config_path = self.dir / "config.yml"
        self.log_path = self.dir / "registry.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"{self.addr}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def _write_config(self) -> None:
        # warn keeps logrus quiet except for errors (useful when a test fails); the access log is always on.
        lines = [
            "version: 0.1",
            "log: {level: warn, accesslog: {disabled: false}}",
            f"storage: {{filesystem: {{rootdirectory: {self.dir / 'data'}}}, delete: {{enabled: true}},"
            " cache: {blobdescriptor: inmemory}}",
            f"http: {{addr: {self.host}, secret: edgecache-tests}}",
        ]
        if self.users:
            import bcrypt   # a test dependency; only registries with users need it
            htpasswd = self.dir / "htpasswd"
            htpasswd.write_text("".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode()}\n"
                                        for u, p in self.users.items()))
            lines.append(f"auth: {{htpasswd: {{realm: registry, path: {htpasswd}}}}}")
        if self.upstream:
            creds = ""
            if self.upstream_auth:
                user, password = (json.dumps(x) for x in self.upstream_auth)  # JSON strings are valid YAML
                creds = f", username: {user}, password: {password}"
            lines.append(f"proxy: {{remoteurl: {self.upstream}{creds}}}")
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> "Registry":
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        self._write_config()
        with open(self.log_path, "ab") as log:
            prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
            self._proc = subprocess.Popen(
                [*prefix, "docker-registry", "serve", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        try:
            wait_http(self.url + "/v2/", timeout)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"registry did not start:\n{self.log_tail()}") from None
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc, timeout)

    def cleanup(self) -> None:
        """Stop and remove the temp dir if this object created it (a caller-given dir is kept for inspection)."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Registry":
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.cleanup()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def _sync(self, timeout: float = 5.0) -> None:
        # The log line is written after the handler returns, which can be just after the client has read the
        # whole body. A marker request issued now is logged after every request that already finished for us.
        marker = _SYNC_PREFIX + uuid.uuid4().hex
        try:
            urllib.request.urlopen(self.url + marker, timeout=timeout).close()
        except urllib.error.HTTPError as e:
            e.close()
        deadline = time.monotonic() + timeout
        while marker not in self.log_path.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise TimeoutError("registry access log did not catch up")
            time.sleep(0.01)

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, request target incl. query, status) for every request logged so far, in log order."""
        if self._proc is not None and self._proc.poll() is None:
            self._sync()
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            m = _ACCESS.match(line)
            if m and not m["target"].startswith(_SYNC_PREFIX):
                out.append((m["method"], m["target"], int(m["status"])))
        return out

    def bytes_sent(self, path_regex: str) -> int:
        """Body bytes the registry sent for GETs whose path fully matches path_regex."""
        if self._proc is not None and self._proc.poll() is None:
            self._sync()
        rx = re.compile(path_regex)
        total = 0
        for line in self.log_path.read_text(errors="replace").splitlines():
            m = _ACCESS.match(line)
            if m and m["method"] == "GET" and rx.fullmatch(m["target"].split("?", 1)[0]) \
                    and m["size"] != "-":
                total += int(m["size"])
        return total

    def count(self, method: str, path_regex: str) -> int:
        """Requests with exactly this method whose path (query stripped) fully matches path_regex.

        fullmatch, so "/v2/a/manifests/v1" does not also count ".../v10"; HEAD and GET are distinct.
        """
        rx = re.compile(path_regex)
        method = method.upper()
        return sum(1 for m, target, _ in self.requests() if m == method and rx.fullmatch(target.split("?", 1)[0]))
