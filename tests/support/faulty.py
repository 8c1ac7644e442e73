"""A fault-injecting OCI upstream (aiohttp.web) serving fixed images on the pull API, counting every request.

    async with FaultyUpstream({"demo/app:v1": img}) as up:          # pytest-asyncio tests
        up.fault("truncate", digest=img.layers[0].digest, times=1)
    with FaultyUpstream.in_thread({"demo/app:v1": img}) as up:       # sync tests: loop in a daemon thread
        up.stop(); ...; up.start()                                    # "refused": same port, nobody listening

Faults apply to GET/HEAD of manifests and blobs (never /v2/ or /token). A fault keyed by a reference (digest,
or tag) wins over the global one (key None). Body faults leave HEAD untouched; `status` applies to HEAD too.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import secrets
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from .images import Artifact, Blob, manifests

FaultKind = Literal["truncate", "wrong_bytes", "stall", "status", "slow", "chunked", "empty",
                    "content_type"]


@dataclass
class Fault:
    kind: FaultKind
    times: int | None = None  # apply to the next N matching requests, then vanish; None = until cleared
    status: int = 500  # for "status"
    retry_after: int | None = None  # for "status": adds a Retry-After header (e.g. with 429)
    seconds: float = 30.0  # for "stall": pause after half the body, then send the rest
    rate: int = 64 * 1024  # for "slow": bytes per second
    delay: float = 0.0  # wait this long before answering (any kind: a slow first byte)
    content_type: str = "application/x-lie"  # for "content_type": the right bytes, a lying header
    no_length: bool = False  # any kind: no Content-Length (chunked), as some proxies send


@dataclass
class _Repo:
    tags: dict[str, Artifact]
    manifests: dict[str, Blob]
    blobs: dict[str, Blob]


class FaultyUpstream:
    """images maps "repo:tag" to an Image/ImageIndex (children and blobs are served under that repo).

    auth=True emulates Bearer token auth (realm <url>/token, tokens scoped to the repos asked for);
    basic=(user, password) additionally requires those Basic credentials at /token.
    port=0 takes a free port on first start; restarts reuse it.
    """

    def __init__(
        self,
        images: Mapping[str, Artifact] | None = None,
        *,
        auth: bool = False,
        basic: tuple[str, str] | None = None,
        token_ttl: int = 300,
        port: int = 0,
    ) -> None:
        self._repos: dict[str, _Repo] = {}
        for ref, obj in (images or {}).items():
            self.add(ref, obj)
        self.auth = auth or basic is not None
        self.basic = basic
        self.token_ttl = token_ttl
        self.port = port
        self.counts: Counter[tuple[str, str]] = Counter()  # (method, path without query) -> n
        self.log: list[tuple[str, str]] = []  # (method, path with query), arrival order
        self.token_requests = 0
        self.sent_bytes = 0  # body bytes handed to the transport, every response
        self._faults: dict[str | None, Fault] = {}
        self._tokens: dict[str, set[str]] = {}  # token -> repos it may pull
        self._runner: web.AppRunner | None = None

    # ---- setup ----------------------------------------------------------------------------------------------

    def add(self, ref: str, obj: Artifact) -> None:
        repo_name, tag = ref.rsplit(":", 1)
        repo = self._repos.setdefault(repo_name, _Repo({}, {}, {}))
        repo.tags[tag] = obj
        repo.manifests.update(manifests(obj))
        repo.blobs.update({b.digest: b for b in obj.blobs})

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def fault(self, kind: FaultKind, digest: str | None = None, **params: Any) -> None:
        """Inject a fault for one reference (blob/manifest digest, or a tag) or, with digest=None, for all."""
        self._faults[digest] = Fault(kind, **params)

    def clear_faults(self) -> None:
        self._faults.clear()

    def revoke_tokens(self) -> None:
        """Forget issued tokens so clients must re-authenticate (emulates expiry)."""
        self._tokens.clear()

    def count(self, method: str, path_regex: str) -> int:
        """Requests with this method whose path (no query) fully matches path_regex; same rules as Registry.count."""
        rx = re.compile(path_regex)
        return sum(n for (m, p), n in self.counts.items() if m == method.upper() and rx.fullmatch(p))

    def reset_counts(self) -> None:
        self.counts.clear()
        self.log.clear()
        self.token_requests = 0
        self.sent_bytes = 0

    # ---- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> "FaultyUpstream":
        app = web.Application(middlewares=[self._count_mw])
        app.router.add_get("/v2/", self._base)
        app.router.add_get("/token", self._token)
        app.router.add_get("/v2/{name:.+}/tags/list", self._tags)
        app.router.add_route("*", "/v2/{name:.+}/manifests/{ref}", self._manifest)
        app.router.add_route("*", "/v2/{name:.+}/blobs/{ref}", self._blob)
        # Short shutdown + handler cancellation so stop() does not wait out a stalled response.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
        await self._runner.setup()
        # port 0 on first start; afterwards the same port again, so a restart looks like a brief outage.
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Close the listener and all connections: until start() again, connections are refused."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> "FaultyUpstream":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @classmethod
    @contextlib.contextmanager
    def in_thread(cls, images: Mapping[str, Artifact] | None = None, **kw: Any) -> Iterator["ThreadedUpstream"]:
        """Run the server on an event loop in a daemon thread, for synchronous tests."""
        with ThreadedUpstream(cls(images, **kw)) as t:
            yield t

    # ---- handlers -------------------------------------------------------------------------------------------

    @web.middleware
    async def _count_mw(self, request: web.Request, handler: Any) -> web.StreamResponse:
        # Counted on arrival, so the count is already up to date when the client sees any response.
        self.counts[(request.method, request.path)] += 1
        self.log.append((request.method, request.path_qs))
        return await handler(request)

    def _challenge(self, scope: str | None) -> web.Response:
        value = f'Bearer realm="{self.url}/token",service="faulty"'
        if scope:
            value += f',scope="{scope}"'
        return _error(401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": value})

    def _denied(self, request: web.Request, repo: str | None) -> web.Response | None:
        if not self.auth:
            return None
        header = request.headers.get("Authorization", "")
        allowed = self._tokens.get(header[7:]) if header.startswith("Bearer ") else None
        if allowed is not None and (repo is None or repo in allowed):
            return None
        return self._challenge(f"repository:{repo}:pull" if repo else None)

    async def _base(self, request: web.Request) -> web.StreamResponse:
        return self._denied(request, None) or web.json_response({})

    async def _token(self, request: web.Request) -> web.StreamResponse:
        self.token_requests += 1
        if self.basic is not None:
            want = "Basic " + base64.b64encode(f"{self.basic[0]}:{self.basic[1]}".encode()).decode()
            if request.headers.get("Authorization") != want:
                return _error(401, "UNAUTHORIZED", "bad credentials", {"WWW-Authenticate": 'Basic realm="faulty"'})
        repos = set()
        for scope in request.query.getall("scope", []):
            parts = scope.split(":")
            if len(parts) >= 3 and parts[0] == "repository":
                repos.add(":".join(parts[1:-1]))
        token = secrets.token_hex(16)
        self._tokens[token] = repos
        return web.json_response({"token": token, "access_token": token, "expires_in": self.token_ttl})

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if (denied := self._denied(request, name)) is not None:
            return denied
        repo = self._repos.get(name)
        if repo is None:
            return _error(404, "NAME_UNKNOWN", "repository name not known to registry")
        return web.json_response({"name": name, "tags": sorted(repo.tags)})

    async def _manifest(self, request: web.Request) -> web.StreamResponse:
        name, ref = request.match_info["name"], request.match_info["ref"]
        if (denied := self._lookup_guard(request, name)) is not None:
            return denied
        repo = self._repos.get(name)
        blob = None
        if repo is not None:
            blob = repo.manifests.get(ref) if ref.startswith("sha256:") else (
                repo.tags[ref].manifest_blob() if ref in repo.tags else None)
        if blob is None:
            return _error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        return await self._send(request, ref, blob.data, blob.media_type, blob.digest)

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        name, ref = request.match_info["name"], request.match_info["ref"]
        if (denied := self._lookup_guard(request, name)) is not None:
            return denied
        repo = self._repos.get(name)
        blob = repo.blobs.get(ref) if repo is not None else None
        if blob is None:
            return _error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        return await self._send(request, ref, blob.data, "application/octet-stream", blob.digest)

    def _lookup_guard(self, request: web.Request, name: str) -> web.Response | None:
        if request.method not in ("GET", "HEAD"):
            return _error(405, "UNSUPPORTED", "pull-only upstream")
        return self._denied(request, name)

    def _take_fault(self, ref: str, method: str) -> Fault | None:
        key = ref if ref in self._faults else None
        f = self._faults.get(key)
        if f is None or (method == "HEAD" and f.kind != "status"):
            return None
        if f.times is not None:
            f.times -= 1
            if f.times <= 0:
                self._faults.pop(key, None)
        return f

    async def _send(
        self, request: web.Request, ref: str, data: bytes, media_type: str, digest: str
    ) -> web.StreamResponse:
        f = self._take_fault(ref, request.method)
        if f is not None and f.delay:
            await asyncio.sleep(f.delay)
        if f is not None and f.kind == "status":
            headers = {"Retry-After": str(f.retry_after)} if f.retry_after is not None else {}
            return _error(f.status, "INJECTED", f"injected status {f.status}", headers)
        if f is not None and f.kind == "content_type":
            media_type = f.content_type
        resp = web.StreamResponse(headers={"Content-Type": media_type, "Docker-Content-Digest": digest})
        if f is not None and f.kind == "empty":
            data = b""                              # 200 with nothing: wrong for any real digest
        if f is None or (f.kind != "chunked" and not f.no_length):   # chunked: no Content-Length
            resp.content_length = len(data)
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        half = len(data) // 2
        orig_write = resp.write

        async def write(b: bytes) -> None:
            self.sent_bytes += len(b)
            await orig_write(b)
        resp.write = write  # type: ignore[method-assign]
        if f is None or f.kind in ("chunked", "empty", "content_type"):
            await resp.write(data)
        elif f.kind == "wrong_bytes":
            # Same length, one flipped byte: only a digest check can notice.
            await resp.write(data[:half] + bytes([data[half] ^ 0xFF]) + data[half + 1:])
        elif f.kind == "truncate":
            await resp.write(data[:half])
            # FIN after half the promised Content-Length (not RST): looks like an upstream dying mid-body.
            request.transport.close()  # type: ignore[union-attr]
            raise asyncio.CancelledError
        elif f.kind == "stall":
            await resp.write(data[:half])
            await asyncio.sleep(f.seconds)
            await resp.write(data[half:])
        elif f.kind == "slow":
            chunk = max(1, f.rate // 20)
            for i in range(0, len(data), chunk):
                await resp.write(data[i:i + chunk])
                await asyncio.sleep(len(data[i:i + chunk]) / f.rate)
        await resp.write_eof()
        return resp


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"errors": [{"code": code, "message": message}]}, status=status, headers=headers)


class ThreadedUpstream:
    """A FaultyUpstream on its own event loop thread; sync start/stop/restart, everything else delegated."""

    def __init__(self, server: FaultyUpstream) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faulty-upstream", daemon=True)

    def _run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> "ThreadedUpstream":
        if not self._thread.is_alive():
            self._thread.start()
        self._run(self.server.start())
        return self

    def stop(self) -> None:
        self._run(self.server.stop())

    def restart(self) -> None:
        self._run(self.server.restart())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # So `up.auth = False` reaches the server rather than shadowing it on the wrapper.
        if name in ("server", "_loop", "_thread"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.server, name, value)

    def __enter__(self) -> "ThreadedUpstream":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self._run(self.server.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
