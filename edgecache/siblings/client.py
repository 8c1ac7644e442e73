"""Talking to sibling caches over HTTP.

Owns one aiohttp session for every sibling. Every request is a hop request
(marked, and signed when there is a secret), and every aiohttp exception or
unexpected status becomes a SiblingError here, and nowhere else. Time is
bounded twice: `timeout` for the connection and the response headers, and
`read_timeout` for any silence inside a body.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import ssl
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

import aiohttp
from yarl import URL

from edgecache import __version__
from edgecache.client_failures import Failure, classify, described
from edgecache.config import SiblingTLS
from edgecache.errors import SiblingError
from edgecache.mediatypes import PREFERENCE
from edgecache.pull.routing import Route
from edgecache.siblings import hopauth
from edgecache.siblings.peers import Peer

HAVE = "X-Edgecache-Have"          # stored | filling: how a sibling holds what we probed
CHECKED = "X-Edgecache-Checked"    # when a sibling last confirmed a tag with its upstream


@dataclass(frozen=True)
class TagAnswer:
    body: bytes
    digest: str
    checked: float


class SiblingBlob:
    """An open blob body from a sibling. Not trusted: the fill verifies the whole
    blob before any client sees a byte of it, and tells us (reject) when it is wrong."""

    trusted = False

    def __init__(self, peer: Peer, resp: aiohttp.ClientResponse, on_reject, min_rate: int,
                 read_timeout: float) -> None:
        self.peer = peer
        self.name = f"sibling {peer.node_id}"
        self._resp = resp
        self._on_reject = on_reject
        self._min_rate = min_rate
        self._read_timeout = read_timeout
        self._started = time.monotonic()
        self._got = 0
        self.size: int | None = resp.content_length

    async def read(self, n: int = 1 << 20) -> bytes:
        try:
            async with asyncio.timeout(self._read_timeout):
                data = await self._resp.content.read(n)
        except Exception as e:   # noqa: BLE001 - translated right here
            raise _translate(self.peer, e, mid_body=True) from e
        self.peer.stats.bytes_from += len(data)
        self._got += len(data)
        # Silence is caught by read_timeout; a trickle is caught here: after the grace
        # period, a sibling slower than min_rate is dropped for the upstream.
        elapsed = time.monotonic() - self._started
        if data and elapsed > self._read_timeout and self._got < self._min_rate * elapsed:
            raise SiblingError(self.peer.node_id or self.peer.url, "slow",
                               f"{self._got / elapsed / 1024:.0f} KiB/s, under siblings.min_rate")
        return data

    def reject(self, err: BaseException) -> None:
        self._on_reject(self.peer, err)


def _translate(peer: Peer, e: BaseException, *, mid_body: bool = False) -> SiblingError:
    who = peer.node_id or peer.url
    if isinstance(e, SiblingError):
        return e
    kind = classify(e)
    if kind is Failure.TIMEOUT:
        return SiblingError(who, kind.value, f"timed out{' mid-body' if mid_body else ''}")
    if mid_body:
        return SiblingError(who, "incomplete", f"body broke off: {described(e)}")
    if kind is not None:
        return SiblingError(who, kind.value, described(e))
    raise e


class SiblingClient:
    def __init__(self, node_id: str, secret: bytes | None, *, timeout: float,
                 read_timeout: float, tls: SiblingTLS | None = None) -> None:
        self.node_id = node_id
        self.tls = tls
        self.secret = secret
        self.timeout = timeout
        self.read_timeout = read_timeout
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        ctx = await asyncio.to_thread(self._ssl_context)
        self._session = aiohttp.ClientSession(
            # Headers are bounded per request (a sibling relaying the upstream answers
            # when the upstream does); silences in bodies by read_timeout, in read().
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=None),
            connector=aiohttp.TCPConnector(limit=64, ssl=ctx),
            auto_decompress=False, read_bufsize=1 << 20,
            headers={"User-Agent": f"edgecache/{__version__} (sibling)"})

    def _ssl_context(self) -> ssl.SSLContext:
        """For https siblings (http ones ignore it): their certificates are verified,
        names included (mDNS gives addresses: certificates need IP SANs)."""
        ctx = ssl.create_default_context(
            cafile=str(self.tls.ca_file) if self.tls and self.tls.ca_file else None)
        if self.tls and self.tls.cert_file and self.tls.key_file:
            ctx.load_cert_chain(str(self.tls.cert_file), str(self.tls.key_file))
        return ctx

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @staticmethod
    def _path(route: Route, kind: str, ref: str) -> str:
        return f"/v2/{route.repo}/{kind}/{ref}?ns={route.upstream}"

    @asynccontextmanager
    async def _request(self, peer: Peer, method: str, path_qs: str,
                       headers: dict[str, str] | None = None, *,
                       timeout: float | None = None,
                       signed: dict[str, str] | None = None) -> AsyncIterator[aiohttp.ClientResponse]:
        """Yields the response once its headers arrived within the timeout."""
        assert self._session is not None, "SiblingClient not started"
        hdrs = {**(headers or {}),
                **(signed or hopauth.sign(self.secret, self.node_id, peer.node_id, method, path_qs))}
        url = URL(peer.url + path_qs, encoded=True)
        try:
            async with asyncio.timeout(timeout or self.timeout):
                resp = await self._session.request(method, url, headers=hdrs,
                                                   allow_redirects=False)
        except Exception as e:   # noqa: BLE001 - translated right here
            raise _translate(peer, e) from e
        try:
            yield resp
        finally:
            resp.release()

    async def _read_all(self, peer: Peer, resp: aiohttp.ClientResponse, cap: int) -> bytes:
        if resp.content_length is not None and resp.content_length > cap:
            raise SiblingError(peer.node_id or peer.url, "bad_response", "answer too large")
        try:
            async with asyncio.timeout(self.read_timeout):
                body = await resp.content.read(cap + 1)
                while len(body) <= cap and (more := await resp.content.read(cap + 1 - len(body))):
                    body += more
        except Exception as e:   # noqa: BLE001
            raise _translate(peer, e, mid_body=True) from e
        if len(body) > cap:
            raise SiblingError(peer.node_id or peer.url, "bad_response", "answer too large")
        return body

    def _status(self, peer: Peer, resp: aiohttp.ClientResponse) -> SiblingError:
        kind = "refused" if resp.status in (401, 403) else (
            "busy" if resp.status == 409 else "status")
        return SiblingError(peer.node_id or peer.url, kind, f"answered {resp.status}")

    # -- the calls -------------------------------------------------------------------

    async def ping(self, peer: Peer) -> tuple[str, str | None]:
        """Its node id and version (a health check). With a secret, it must prove it
        holds it too: anyone can answer like an edgecache."""
        challenge = secrets.token_hex(16)
        path = f"{hopauth.PING_PATH}?challenge={challenge}"
        # Addressed to no one in particular: the node at this address may not be the
        # one we knew (a reinstalled box), and must still be able to answer.
        signed = hopauth.sign(self.secret, self.node_id, None, "GET", path)
        async with self._request(peer, "GET", path, signed=signed) as r:
            if r.status != 200:
                raise self._status(peer, r)
            try:
                doc = json.loads(await self._read_all(peer, r, 4096))
                node_id, proof = str(doc["node_id"]), doc.get("proof")
            except (ValueError, KeyError, TypeError):
                raise SiblingError(peer.url, "bad_response", "not an edgecache") from None
        if self.secret and not (isinstance(proof, str) and hmac.compare_digest(
                proof, hopauth.proof(self.secret, node_id, challenge))):
            raise SiblingError(peer.url, "refused", f"{node_id} does not hold the site's secret")
        return node_id, doc.get("version")

    async def probe(self, peer: Peer, route: Route, kind: str, digest: str,
                    timeout: float) -> str | None:
        """'stored' or 'filling' when the sibling holds the content, None when not."""
        async with self._request(peer, "HEAD", self._path(route, kind, digest),
                                 {"Accept": ", ".join(PREFERENCE)}, timeout=timeout) as r:
            if r.status == 404:
                return None
            if r.status != 200:
                raise self._status(peer, r)
            return r.headers.get(HAVE, "stored")

    @asynccontextmanager
    async def blob(self, peer: Peer, route: Route, digest: str, on_reject, wait: float,
                   min_rate: int) -> AsyncIterator[SiblingBlob]:
        async with self._request(peer, "GET", self._path(route, "blobs", digest),
                                 timeout=wait) as r:
            if r.status != 200:
                raise self._status(peer, r)
            yield SiblingBlob(peer, r, on_reject, min_rate, read_timeout=self.read_timeout)

    async def manifest(self, peer: Peer, route: Route, digest: str, cap: int,
                       wait: float) -> bytes:
        """A manifest by digest (the caller verifies it, and reads its media type from
        the body: the sibling's Content-Type is not trusted)."""
        async with self._request(peer, "GET", self._path(route, "manifests", digest),
                                 {"Accept": ", ".join(PREFERENCE)}, timeout=wait) as r:
            if r.status != 200:
                raise self._status(peer, r)
            body = await self._read_all(peer, r, cap)
            peer.stats.bytes_from += len(body)
            return body

    async def tag(self, peer: Peer, route: Route, tag: str, accept: list[str],
                  cap: int) -> TagAnswer | None:
        """The sibling's last known answer for a tag (it never asks anyone for it)."""
        path = self._path(route, "manifests", tag)
        signed = hopauth.sign(self.secret, self.node_id, peer.node_id, "GET", path)
        async with self._request(peer, "GET", path, {"Accept": ", ".join(accept)},
                                 signed=signed) as r:
            if r.status == 404:
                return None
            if r.status != 200:
                raise self._status(peer, r)
            body = await self._read_all(peer, r, cap)
            digest = r.headers.get("Docker-Content-Digest")
            checked_s = r.headers.get(CHECKED, "0")
            try:
                checked = float(checked_s)
            except ValueError:
                checked = 0.0
            who = peer.node_id or peer.url
            if not digest:
                raise SiblingError(who, "bad_response", "tag answer without a digest")
            if self.secret and not hmac.compare_digest(
                    r.headers.get(hopauth.REPLY, ""),
                    hopauth.reply_mac(self.secret, peer.node_id or "",
                                      hopauth.nonce_of(signed.get(hopauth.AUTH)), digest,
                                      checked_s, body)):
                raise SiblingError(who, "refused", "tag answer not signed by the sibling")
            return TagAnswer(body, digest, checked)
