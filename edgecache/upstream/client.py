"""The registry client for one upstream.

Owns one aiohttp ClientSession (opened in `start`, closed in `close`) with the
configured timeouts and TLS. Every aiohttp exception is translated into our
UpstreamError family here, and nowhere else.

Longer than most modules on purpose: it is the one boundary with an upstream, and
redirects, challenges, caps and the translation of failures have to be read
together to check where credentials and bytes may go.
"""
from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Mapping

import aiohttp
from yarl import URL

from edgecache.client_failures import Failure, classify, described
from edgecache.config import BreakerConfig, LimitsConfig, Timeouts, UpstreamConfig
from edgecache.errors import (ManifestTooLarge, UpstreamBadResponse, UpstreamDenied, UpstreamDown, UpstreamError,
                              UpstreamIncomplete, UpstreamNotFound, UpstreamRateLimited, UpstreamTimeout,
                              UpstreamUnreachable)
from edgecache.mediatypes import OCI_INDEX
from edgecache.reference import parse_digest
from edgecache.upstream.auth import TokenCache, basic_header, parse_challenge
from edgecache.upstream.breaker import Breaker
from edgecache.upstream.redirects import (MAX_REDIRECTS, AddressRefused, GuardedResolver,
                                          address_refusal, addresses_of, nearness, refusal)

USER_AGENT = "edgecache/0.1"


@dataclass(frozen=True)
class ManifestHead:
    digest: str | None
    media_type: str
    size: int | None


@dataclass(frozen=True)
class Manifest:
    body: bytes
    digest: str | None           # Docker-Content-Digest as the upstream sent it
    media_type: str


@dataclass(frozen=True)
class Referrers:
    body: bytes
    link: str | None
    etag: str | None


class BlobStream:
    """An open blob response: the blob's whole size and its body from `offset` on,
    chunk by chunk (a server that ignored the Range has its first bytes skipped)."""

    def __init__(self, client: "UpstreamClient", resp: aiohttp.ClientResponse,
                 offset: int = 0) -> None:
        self._client = client
        self._resp = resp
        partial = resp.status == 206
        self._skip = 0 if partial else offset
        length = resp.content_length
        self.size: int | None = None if length is None else length + (offset if partial else 0)

    async def read(self, n: int = 1 << 20) -> bytes:
        """Up to n bytes as soon as any arrive; b"" at the end."""
        try:
            while True:
                data = await self._resp.content.read(n)
                if not self._skip or not data:
                    return data
                drop = min(self._skip, len(data))
                self._skip -= drop
                if data[drop:]:
                    return data[drop:]
        except Exception as e:    # noqa: BLE001 - translated right here, the one boundary
            raise self._client.translate(e, mid_body=True) from e


def _content_range(header: str | None) -> re.Match[str] | None:
    """A 206's Content-Range, "bytes START-END/TOTAL" (TOTAL may be "*")."""
    return re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", (header or "").strip())


def _range_starts_at(content_range: str | None, offset: int) -> bool:
    """Whether a 206's Content-Range runs from offset to the end."""
    m = _content_range(content_range)
    if not m or int(m[1]) != offset:
        return False
    return m[3] == "*" or int(m[2]) + 1 == int(m[3])


UNANSWERED_FOR = 120.0       # seconds an unanswered request keeps an upstream "not answering"


class UpstreamClient:
    def __init__(self, cfg: UpstreamConfig, timeouts: Timeouts, breaker: BreakerConfig,
                 limits: LimitsConfig = LimitsConfig(),
                 listen: tuple[str, int] = ("0.0.0.0", 5000)) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.timeouts = timeouts
        self.limits = limits
        self.listen = listen             # our own listener: never a redirect's target
        self._near: frozenset[str] | None = None   # loopback/link-local: is the upstream there?
        self.breaker = Breaker(breaker.failures, breaker.backoff, breaker.max_backoff)
        self.tokens = TokenCache()
        self._origin = URL(cfg.url).origin()      # where its credentials may always go
        self._basic = basic_header(cfg.username, cfg.password) if cfg.username and cfg.password else None
        self._use_basic = False
        self._session: aiohttp.ClientSession | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_ok_at: float | None = None
        # When a request last got no answer, or a server failure (5xx): down after one
        # failed attempt, not only once the breaker opens; None once one is answered.
        self._unanswered_at: float | None = None
        self.on_error: Callable[[UpstreamError], None] | None = None

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        ssl_ctx: ssl.SSLContext | bool = True
        if self.cfg.tls.insecure_skip_verify:
            ssl_ctx = False
        elif self.cfg.tls.ca_file:
            ssl_ctx = ssl.create_default_context(cafile=str(self.cfg.tls.ca_file))
        # sock_connect bounds the TCP (and TLS) handshake; connect also bounds DNS and the
        # wait for a pooled connection, which a busy pool can make longer than a dial.
        timeout = aiohttp.ClientTimeout(total=None,
                                        connect=self.timeouts.connect + self.timeouts.read,
                                        sock_connect=self.timeouts.connect,
                                        sock_read=self.timeouts.read)
        # Redirect targets are checked again when connecting (upstream/redirects.py).
        resolver = GuardedResolver(URL(self.cfg.url).raw_host or "", self._address_refusal)
        connector = aiohttp.TCPConnector(ssl=ssl_ctx, limit=64, ttl_dns_cache=300,
                                         resolver=resolver)
        self._session = aiohttp.ClientSession(
            timeout=timeout, connector=connector, auto_decompress=False,
            read_bufsize=1 << 20,   # large reads: fewer hops to the writer thread per blob
            headers={"User-Agent": USER_AGENT})

    async def close(self) -> None:
        if self._session:
            await self._session.close()
            self._session = None

    # -- the one boundary for aiohttp's exceptions -----------------------------

    def translate(self, e: BaseException, *, mid_body: bool = False) -> UpstreamError:
        if isinstance(e, UpstreamError):
            return e
        if mid_body:
            return UpstreamIncomplete(self.name, f"body broke off: {described(e)}")
        if isinstance(getattr(e, "os_error", None), AddressRefused) or \
                isinstance(e.__cause__, AddressRefused):
            return UpstreamBadResponse(self.name, 0, f"redirect refused when connecting: "
                                       f"{e.__cause__ or e}")
        kind = classify(e)
        if kind is Failure.TIMEOUT:
            return UpstreamTimeout(self.name, f"timed out ({type(e).__name__})")
        if kind is Failure.UNREACHABLE:
            return UpstreamUnreachable(self.name, described(e))
        if kind is Failure.BAD_RESPONSE:
            return UpstreamBadResponse(self.name, 0, described(e))
        raise e

    def _record_failure(self, err: UpstreamError) -> None:
        self.last_error = str(err)
        self.last_error_at = time.time()
        if self.on_error:
            self.on_error(err)
        if isinstance(err, (UpstreamUnreachable, UpstreamTimeout)):
            self.breaker.failure()

    # -- requests ----------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.cfg.url}{path}"

    @asynccontextmanager
    async def _request(self, method: str, path: str, *, scope: str | None,
                       headers: Mapping[str, str] | None = None,
                       params: Mapping[str, str] | None = None,
                       redirect_anywhere: bool = False,
                       not_modified: bool = False,
                       ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send with auth (answering one challenge), breaker and translated errors.

        Yields a response with a 2xx status (or a 304, when `not_modified`: a
        conditional GET); anything else is raised as ours.
        """
        if self._session is None:
            raise UpstreamUnreachable(self.name, "client not started")
        if not self.breaker.allow():
            raise UpstreamDown(self.name, self.breaker.retry_in())
        hdrs = dict(headers or {})
        resp: aiohttp.ClientResponse | None = None
        try:
            for attempt in (0, 1):
                auth = self._auth_header(scope)
                if auth:
                    hdrs["Authorization"] = auth
                resp = await self._send(method, path, hdrs, params, redirect_anywhere)
                if resp.status == 401 and attempt == 0 and (
                        self._auth_header(scope) != auth      # a token arrived meanwhile
                        or await self._answer_challenge(resp, scope)):
                    resp.release()
                    continue
                break
            assert resp is not None
            self.breaker.success()
            self.last_ok_at = time.time()
            self._unanswered_at = time.monotonic() if resp.status >= 500 else None
            if resp.status >= 300 and not (not_modified and resp.status == 304):
                raise self._status_error(resp)
        except BaseException as e:
            if resp is not None:
                resp.release()
            if isinstance(e, asyncio.CancelledError):
                raise
            err = self.translate(e)
            if isinstance(err, (UpstreamUnreachable, UpstreamTimeout)):
                self._unanswered_at = time.monotonic()      # no answer at all
            self._record_failure(err)
            raise err from (None if e is err else e)
        try:
            yield resp
        finally:
            resp.release()

    async def _send(self, method: str, path: str, headers: dict[str, str],
                    params: Mapping[str, str] | None, anywhere: bool) -> aiohttp.ClientResponse:
        """One request, its redirects followed by the rules of upstream/redirects.py
        (`anywhere`: a blob, which may come from another host); Authorization goes to
        the upstream's own origin only."""
        assert self._session is not None
        resp = await self._session.request(method, self._url(path), headers=headers,
                                           params=params, allow_redirects=False)
        for hop in range(MAX_REDIRECTS + 1):
            location = resp.headers.get("Location")
            if resp.status not in (301, 302, 303, 307, 308) or not location:
                return resp
            resp.release()
            if hop == MAX_REDIRECTS:
                break
            try:
                target = resp.url.join(URL(location))
            except ValueError:
                target = URL()
            why = await self._redirect_refusal(target, same_host_only=not anywhere)
            if why is not None:
                raise UpstreamBadResponse(self.name, resp.status, f"redirect refused: {why}")
            hdrs = headers if target.origin() == self._origin else {
                k: v for k, v in headers.items() if k.lower() != "authorization"}
            # 303: see other, with a GET (a HEAD stays a HEAD, RFC 9110 15.4.4).
            follow = "GET" if resp.status == 303 and method != "HEAD" else method
            resp = await self._session.request(follow, target, headers=hdrs,
                                               allow_redirects=False)
        raise UpstreamBadResponse(self.name, resp.status, f"over {MAX_REDIRECTS} redirects")

    async def _upstream_near(self) -> frozenset[str]:
        """Which of loopback and link-local the upstream itself is on (asked once)."""
        if self._near is None:
            own = URL(self.cfg.url)
            try:
                addrs = await addresses_of(own.host or "", own.port or 0)
            except OSError:
                return frozenset()            # asked again next time
            self._near = frozenset(k for a in addrs if (k := nearness(a)) is not None)
        return self._near

    async def _address_refusal(self, addr, port: int) -> str | None:
        """For the resolver: a name other than the upstream's (a redirect's, a token
        realm's) may resolve to addr:port?"""
        return address_refusal(addr, port, upstream_near=await self._upstream_near(),
                               listen=self.listen)

    async def _redirect_refusal(self, target: URL, *, same_host_only: bool) -> str | None:
        if not target.is_absolute() or not target.host:
            return "to no URL"
        near = await self._upstream_near()
        try:
            addrs = await addresses_of(target.host, target.port or 0)
        except OSError as e:
            return f"cannot resolve {target.host}: {e}"
        return refusal(target, addrs, upstream=URL(self.cfg.url), upstream_near=near,
                       listen=self.listen, same_host_only=same_host_only)

    async def _read_upto(self, resp: aiohttp.ClientResponse, limit: int) -> bytes:
        """The body, to its end or `limit` bytes, whichever comes first (read(n) gives
        what has arrived: keep reading)."""
        body = bytearray()
        try:
            while len(body) < limit and (more := await resp.content.read(limit - len(body))):
                body += more
        except Exception as e:   # noqa: BLE001
            raise self.translate(e, mid_body=True) from e
        return bytes(body)

    def _status_error(self, resp: aiohttp.ClientResponse) -> UpstreamError:
        s = resp.status
        if s == 404:
            return UpstreamNotFound(self.name, f"{resp.method} {resp.url.path}: 404")
        if s == 429:
            return UpstreamRateLimited(self.name, resp.headers.get("Retry-After"))
        if s in (401, 403):
            return UpstreamDenied(self.name, s)
        return UpstreamBadResponse(self.name, s, f"for {resp.method} {resp.url.path}")

    def _auth_header(self, scope: str | None) -> str | None:
        if scope:
            tok = self.tokens.get(scope)
            if tok:
                return f"Bearer {tok}"
        if self._use_basic:
            return self._basic
        return None

    def _own_origin(self, url: URL) -> bool:
        return url.origin() == self._origin

    def _realm_may_see_credentials(self, realm: URL) -> bool:
        """The upstream's own origin, or a token service its configuration names."""
        if self._own_origin(realm):
            return True
        plain = str(realm.with_query(None).with_fragment(None)).rstrip("/")
        return any(plain == r or plain.startswith(r + "/") for r in self.cfg.token_realms)

    async def _answer_challenge(self, resp: aiohttp.ClientResponse, scope: str | None) -> bool:
        """Act on a 401's challenge; True when a retry may now succeed."""
        ch = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
        if ch is None:
            return False
        if not self._own_origin(resp.url):
            # A redirect took us to another host (a CDN, a blob store) that asks for
            # credentials: they are the upstream's, not its; and a retry would go
            # through the redirect again, where aiohttp drops Authorization anyway.
            return False
        if ch.scheme == "basic":
            if self._basic and not self._use_basic:
                self._use_basic = True
                return True
            return False
        if ch.scheme != "bearer" or "realm" not in ch.params:
            return False
        tscope = ch.params.get("scope") or scope or ""
        await self.tokens.fetch(scope or tscope, lambda: self._fetch_token(ch.params, tscope))
        return True

    async def _fetch_token(self, params: dict[str, str], scope: str) -> tuple[str, float]:
        assert self._session is not None
        try:
            realm = URL(params["realm"])
        except ValueError:
            raise UpstreamBadResponse(self.name, 401, "the challenge's realm is not a URL") from None
        if realm.scheme not in ("http", "https") or not realm.host:
            raise UpstreamBadResponse(self.name, 401, f"token realm {params['realm'][:200]!r} refused")
        if self._origin.scheme == "https" and realm.scheme != "https":
            raise UpstreamBadResponse(self.name, 401, f"token realm {realm.with_query(None)} is "
                                      "plain http for an https upstream: refused")
        q = {k: v for k, v in (("service", params.get("service")), ("scope", scope)) if v}
        # Credentials only for the upstream's own host and the realms its configuration
        # names (token_realms); any other token service is asked anonymously.
        hdrs = {"Authorization": self._basic} if self._basic and \
            self._realm_may_see_credentials(realm) else {}
        cap = self.limits.token_bytes
        # Not followed anywhere: a token service answers itself.
        async with self._session.get(realm, params=q, headers=hdrs, allow_redirects=False) as r:
            if r.status in (401, 403):
                raise UpstreamDenied(self.name, r.status)
            if r.status != 200:
                raise UpstreamBadResponse(self.name, r.status, "from the token service")
            body = await self._read_upto(r, cap + 1)
        if len(body) > cap:
            raise UpstreamBadResponse(self.name, 200, f"token response over {cap} bytes "
                                      "(limits.token_bytes)")
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
            expires_in = float(doc.get("expires_in") or 60)
        except (ValueError, TypeError, AttributeError):
            raise UpstreamBadResponse(self.name, 200, "the token service sent no usable JSON") from None
        if not isinstance(token, str) or not token:
            raise UpstreamBadResponse(self.name, 200, "token response without a token")
        return token, expires_in

    # -- the pull API ------------------------------------------------------------

    @staticmethod
    def scope(repo: str) -> str:
        return f"repository:{repo}:pull"

    async def head_manifest(self, repo: str, ref: str, accept: list[str]) -> ManifestHead:
        async with self._request("HEAD", f"/v2/{repo}/manifests/{ref}", scope=self.scope(repo),
                                 headers={"Accept": ", ".join(accept)}) as r:
            return ManifestHead(r.headers.get("Docker-Content-Digest"),
                                r.headers.get("Content-Type", ""), r.content_length)

    async def get_manifest(self, repo: str, ref: str, accept: list[str], max_size: int) -> Manifest:
        async with self._request("GET", f"/v2/{repo}/manifests/{ref}", scope=self.scope(repo),
                                 headers={"Accept": ", ".join(accept)}) as r:
            if r.content_length is not None and r.content_length > max_size:
                raise ManifestTooLarge(f"{repo}:{ref} is over {max_size} bytes")
            body = await self._read_upto(r, max_size + 1)
            if len(body) > max_size:
                raise ManifestTooLarge(f"{repo}:{ref} is over {max_size} bytes")
            return Manifest(body, r.headers.get("Docker-Content-Digest"),
                            r.headers.get("Content-Type", "").split(";")[0].strip())

    async def head_blob(self, repo: str, digest: str) -> int | None:
        async with self._request("HEAD", f"/v2/{repo}/blobs/{digest}", scope=self.scope(repo),
                                 redirect_anywhere=True) as r:
            return r.content_length

    @asynccontextmanager
    async def blob(self, repo: str, digest: str, offset: int = 0) -> AsyncIterator[BlobStream]:
        """The blob's body, from `offset` on (to finish what a sibling started)."""
        headers = {"Range": f"bytes={offset}-"} if offset else None
        async with self._request("GET", f"/v2/{repo}/blobs/{digest}", scope=self.scope(repo),
                                 headers=headers, redirect_anywhere=True) as r:
            if r.status == 206 and not _range_starts_at(r.headers.get("Content-Range"), offset):
                raise UpstreamBadResponse(self.name, 206, f"Content-Range "
                                          f"{r.headers.get('Content-Range')!r} for bytes={offset}-")
            yield BlobStream(self, r, offset)

    async def blob_window(self, repo: str, digest: str, offset: int, n: int,
                          size: int) -> bytes | bool:
        """n bytes of a blob from offset (fewer at its end), by a bounded Range. From a
        registry that ignores Range (a 200), whether its whole body, hashed as it comes
        and not kept, is the digest (of `size` bytes: a longer body is not)."""
        headers = {"Range": f"bytes={offset}-{offset + n - 1}"}
        async with self._request("GET", f"/v2/{repo}/blobs/{digest}", scope=self.scope(repo),
                                 headers=headers, redirect_anywhere=True) as r:
            if r.status != 206:
                d = parse_digest(digest)
                h = d.hasher()
                got = 0
                try:
                    while chunk := await r.content.read(1 << 20):
                        got += len(chunk)
                        if got > size:
                            return False                 # endless, or not this blob
                        await asyncio.to_thread(h.update, chunk)     # MiBs: not on the loop
                except Exception as e:   # noqa: BLE001
                    raise self.translate(e, mid_body=True) from e
                return got == size and h.hexdigest() == d.hex
            m = _content_range(r.headers.get("Content-Range"))
            if not m or int(m[1]) != offset:
                raise UpstreamBadResponse(self.name, 206, f"Content-Range "
                                          f"{r.headers.get('Content-Range')!r} for bytes={offset}-")
            # Up to one byte more than asked: a longer answer then compares unequal.
            return await self._read_upto(r, n + 1)

    async def tags_list(self, repo: str, params: Mapping[str, str]) -> tuple[bytes, str | None]:
        """The body (at most limits.tag_list_bytes) and the Link header (pagination)
        of one page of a tag list."""
        async with self._request("GET", f"/v2/{repo}/tags/list", scope=self.scope(repo),
                                 params=params) as r:
            body = await self._capped(r, self.limits.tag_list_bytes, "tag list",
                                      "limits.tag_list_bytes")
            return body, r.headers.get("Link")

    async def _capped(self, r: aiohttp.ClientResponse, cap: int, what: str, key: str) -> bytes:
        """A JSON answer's body, refused (a bad answer) over `cap` bytes, declared or sent."""
        if r.content_length is not None and r.content_length > cap:
            raise UpstreamBadResponse(self.name, 200, f"{what} of {r.content_length} bytes, "
                                      f"over {cap} ({key})")
        body = await self._read_upto(r, cap + 1)
        if len(body) > cap:
            raise UpstreamBadResponse(self.name, 200, f"{what} over {cap} bytes ({key})")
        return body

    async def referrers(self, repo: str, digest: str, params: Mapping[str, str],
                        etag: str | None) -> Referrers | None:
        """One page of the referrers API (at most limits.manifest_bytes); None when
        the upstream says the answer for `etag` is unchanged (304). A registry without
        the API answers 404: UpstreamNotFound."""
        headers = {"Accept": OCI_INDEX, **({"If-None-Match": etag} if etag else {})}
        async with self._request("GET", f"/v2/{repo}/referrers/{digest}", scope=self.scope(repo),
                                 params=params, headers=headers, not_modified=True) as r:
            if r.status == 304:
                return None
            body = await self._capped(r, self.limits.manifest_bytes, "referrers answer",
                                      "limits.manifest_bytes")
            return Referrers(body, r.headers.get("Link"), r.headers.get("ETag"))

    @property
    def answering(self) -> bool:
        """Its last request was answered (not a 5xx, not unreachable, not timed out); a
        failure is remembered UNANSWERED_FOR, so an idle upstream is not down forever."""
        at = self._unanswered_at
        return at is None or time.monotonic() - at > UNANSWERED_FOR

    @property
    def up(self) -> bool:
        return self.breaker.state == "closed" and self.answering

    def status(self) -> dict[str, object]:
        return {
            "url": self.cfg.url,
            "state": "down" if self.breaker.state == "open" else
                     ("probing" if self.breaker.state == "half_open" else "up"),
            "answering": self.answering,
            "consecutive_failures": self.breaker.consecutive,
            "retry_in_s": round(self.breaker.retry_in(), 1),
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_ok_at": self.last_ok_at,
        }


class Upstreams:
    """Owns every upstream client: one lifecycle for all their sessions."""

    def __init__(self, configs: Mapping[str, UpstreamConfig], timeouts: Timeouts,
                 breaker: BreakerConfig, limits: LimitsConfig = LimitsConfig(),
                 listen: tuple[str, int] = ("0.0.0.0", 5000)) -> None:
        self.clients = {name: UpstreamClient(c, timeouts, breaker, limits, listen)
                        for name, c in configs.items()}

    def get(self, name: str) -> UpstreamClient:
        return self.clients[name]

    async def __aenter__(self) -> "Upstreams":
        for c in self.clients.values():
            await c.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(c.close() for c in self.clients.values()))
