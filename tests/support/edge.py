"""edgecache under test: in-process (for async tests that look inside) or as a
real `edgecache serve` process on uvloop (for real clients and crash tests)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from edgecache.config import Config, build
from edgecache.server.accesslog import JsonAccessLogger
from edgecache.server.app import build_app
from edgecache.server.guard import listener_ssl_context
from edgecache.server.protocol import Runner
from edgecache.server.registry_api import SERVICES, Services

from .ports import free_port, wait_http
from .procs import stop_process


def make_config(data_dir: Path, upstreams: dict[str, str], *, port: int = 0,
                default: str | None = None, **extra: Any) -> dict[str, Any]:
    """A config document (as YAML would give it) for the given upstream URLs."""
    doc: dict[str, Any] = {
        "listen": f"127.0.0.1:{port or free_port()}",
        "data_dir": str(data_dir),
        "upstreams": {name: {"url": url} for name, url in upstreams.items()},
        "upstream_timeout": {"connect": "2s", "read": "5s"},
    }
    if default:
        doc["default_upstream"] = default
    doc.update(extra)
    return doc


class EdgeServer:
    """The app in this process, on a real loopback socket."""

    def __init__(self, doc: dict[str, Any] | None = None, *, config: Config | None = None) -> None:
        self.config: Config = config or build(doc, source="<test>", env={}, uid=os.geteuid())
        self.app = build_app(self.config)
        self._runner: web.AppRunner | None = None
        self.url = f"http://127.0.0.1:{self.config.listen_port}"

    @property
    def services(self) -> Services:
        return self.app[SERVICES]

    async def start(self) -> "EdgeServer":
        self._runner = Runner(self.app, self.config.server, access_log_class=JsonAccessLogger)
        await self._runner.setup()
        tls = listener_ssl_context(self.config.tls) if self.config.tls else None
        await web.TCPSite(self._runner, "127.0.0.1", self.config.listen_port, ssl_context=tls).start()
        return self

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "EdgeServer":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stored(self, digest: str, timeout: float = 5.0) -> bool:
        """Wait until the store holds digest: clients finish on verification, the commit follows."""
        import asyncio
        from edgecache.reference import parse_digest
        d = parse_digest(digest)
        for _ in range(int(timeout / 0.02)):
            if self.services.store.has(d):
                return True
            await asyncio.sleep(0.02)
        return False

    async def get(self, session: aiohttp.ClientSession, path: str, **kw: Any) -> tuple[int, dict, bytes]:
        async with session.get(self.url + path, **kw) as r:
            return r.status, dict(r.headers), await r.read()


@contextlib.asynccontextmanager
async def edge_world(tmp_path: Path, image, **cfg: Any):
    """A fault-injecting upstream serving `image` as demo/app:v1 (central.example, the
    default), edgecache in this process in front of it, and a client session."""
    from .faulty import FaultyUpstream
    async with FaultyUpstream({"demo/app:v1": image}) as up:
        doc = make_config(tmp_path / "data", {"central.example": up.url},
                          default="central.example", **cfg)
        async with EdgeServer(doc) as edge, aiohttp.ClientSession() as session:
            yield up, edge, image, session


class EdgeProcess:
    """`python -m edgecache serve --config FILE` as a child process."""

    def __init__(self, workdir: Path, doc: dict[str, Any], *, netns_prefix: list[str] | None = None,
                 url: str | None = None, stdout: Path | None = None) -> None:
        self.workdir = workdir
        self.doc = doc
        self.config_path = workdir / "edgecache.yaml"
        self.config_path.write_text(yaml.safe_dump(doc))
        self.url = url or "http://" + doc["listen"]
        self.prefix = netns_prefix or []     # e.g. ["ip", "netns", "exec", NS]
        self.proc: subprocess.Popen | None = None
        self.stdout = stdout or workdir / "edgecache.out"     # the access log (os.devnull: discarded)
        self.stderr = workdir / "edgecache.err"

    def start(self, timeout: float = 15.0) -> "EdgeProcess":
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "edgecache", "serve", "--config", str(self.config_path)],
            stdout=open(self.stdout, "ab"), stderr=open(self.stderr, "ab"))
        try:
            wait_http(self.url + "/_edgecache/health", timeout)
        except TimeoutError:
            self.stop()
            raise RuntimeError("edgecache did not start:\n" + self.stderr.read_text()[-2000:])
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        proc, self.proc = self.proc, None
        return stop_process(proc, timeout, sig)

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def access_log(self) -> list[dict]:
        """The access log so far: every line of a request answered before this call
        (lines are written within the sink's LINGER; waited for here)."""
        import json
        import time
        from edgecache.server.logsink import LINGER
        time.sleep(3 * LINGER)
        return [json.loads(line) for line in self.stdout.read_text().splitlines() if line.startswith("{")]

    def __enter__(self) -> "EdgeProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


