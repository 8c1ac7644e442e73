"""Who may pull what: client networks, Basic credentials (htpasswd, bcrypt),
static bearer tokens (for K3s nodes), verified client certificates (mutual TLS),
and which upstreams anonymous clients may use.

A cache that holds upstream credentials would otherwise publish every private
image to whoever can reach it. No HTTP here: the server asks `identify` and
`check_upstream` and turns the domain errors into 401/403.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import bcrypt

from edgecache.config import AccessConfig, UpstreamConfig
from edgecache.errors import Forbidden, Unauthorized

# bcrypt is slow on purpose (~0.1 s): a verified Basic header is remembered a while,
# so a client that sends it on every request pays once.
VERIFIED_TTL = 300.0


@dataclass(frozen=True)
class Identity:
    name: str
    method: str          # basic | token | cert | sibling


def _read_htpasswd(path: Path) -> dict[str, bytes]:
    users = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        user, _, hashed = line.partition(":")
        if hashed.startswith(("$2y$", "$2b$", "$2a$")):
            users[user] = hashed.encode()
    return users


def _read_tokens(path: Path) -> dict[str, str]:
    """token -> name; lines are NAME:TOKEN or just TOKEN."""
    tokens = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.rpartition(":")
        tokens[token] = name if sep else f"token{n}"
    return tokens


class Access:
    def __init__(self, cfg: AccessConfig, upstreams: Mapping[str, UpstreamConfig]) -> None:
        self.denied = 0
        self._verified: dict[bytes, tuple[Identity, float]] = {}
        self._apply(*self.read(cfg, upstreams))

    @staticmethod
    def read(cfg: AccessConfig, upstreams: Mapping[str, UpstreamConfig]) -> tuple:
        """Everything the rules are made of, files read (blocking: off the event loop)."""
        return (cfg, [ipaddress.ip_network(n, strict=False) for n in cfg.networks],
                _read_htpasswd(cfg.htpasswd) if cfg.htpasswd else {},
                _read_tokens(cfg.tokens_file) if cfg.tokens_file else {},
                {name for name, u in upstreams.items() if not u.public})

    def _apply(self, cfg: AccessConfig, networks, users, tokens, private) -> None:
        self.networks = networks
        self.users = users
        self.tokens = tokens
        self.private = private
        self.admins = frozenset(cfg.admin)
        # A revoked user's remembered verification must not outlive the reload.
        self._verified.clear()

    async def reload(self, cfg: AccessConfig, upstreams: Mapping[str, UpstreamConfig]) -> None:
        """Re-read the rules (SIGHUP): a revoked user or token is refused from now on."""
        self._apply(*await asyncio.to_thread(self.read, cfg, upstreams))

    @property
    def any_credentials(self) -> bool:
        return bool(self.users or self.tokens)

    @property
    def guards_operators(self) -> bool:
        """Status, metrics and sync progress name images, digests and upstreams: with
        credentials configured, or anything private, only clients who identify get them."""
        return self.any_credentials or bool(self.private)

    def check_operator(self, who: Identity | None) -> None:
        if who is None and self.guards_operators:
            self.denied += 1
            raise Unauthorized("operator endpoints need credentials")

    def check_admin(self, who: Identity | None) -> None:
        """POST gc, verify, sync: anyone who identifies, or only access.admin when set."""
        if who is None and (self.guards_operators or self.admins):
            self.denied += 1
            raise Unauthorized("admin actions need credentials")
        if self.admins and (who is None or who.name not in self.admins):
            self.denied += 1
            raise Forbidden(f"{who.name if who else 'anonymous'} is not in access.admin")

    def check_network(self, remote: str | None) -> None:
        if not self.networks:
            return
        try:
            addr = ipaddress.ip_address((remote or "").split("%")[0])
        except ValueError:
            raise Forbidden(f"client address {remote!r} is not allowed") from None
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        if not any(addr in net for net in self.networks):
            self.denied += 1
            raise Forbidden(f"client {addr} is outside access.networks")

    async def identify(self, authorization: str | None, cert_subject: str | None) -> Identity | None:
        """Who the client is, or None if anonymous; wrong credentials raise Unauthorized."""
        if authorization:
            scheme, _, value = authorization.partition(" ")
            scheme = scheme.lower()
            if scheme == "bearer":
                for token, name in self.tokens.items():
                    if hmac.compare_digest(token.encode(), value.strip().encode()):
                        return Identity(name, "token")
                self.denied += 1
                raise Unauthorized("unknown bearer token")
            if scheme == "basic":
                return await self._basic(value.strip())
            self.denied += 1
            raise Unauthorized(f"unsupported authorization scheme {scheme!r}")
        if cert_subject:
            return Identity(cert_subject, "cert")
        return None

    async def _basic(self, value: str) -> Identity | None:
        key = hashlib.sha256(value.encode()).digest()
        hit = self._verified.get(key)
        now = time.monotonic()
        if hit and hit[1] > now:
            return hit[0]
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            self.denied += 1
            raise Unauthorized("malformed Basic credentials") from None
        if not user and not password:
            return None      # empty credentials (skopeo sends them when it has none): anonymous
        hashed = self.users.get(user)
        ok = hashed is not None and await asyncio.to_thread(bcrypt.checkpw, password.encode(), hashed)
        if not ok:
            self.denied += 1
            raise Unauthorized("wrong user name or password")
        ident = Identity(user, "basic")
        if len(self._verified) > 10_000:
            self._verified.clear()
        self._verified[key] = (ident, now + VERIFIED_TTL)
        return ident

    def check_upstream(self, upstream: str, who: Identity | None) -> None:
        if upstream in self.private and who is None:
            self.denied += 1
            raise Unauthorized(f"{upstream} is private: authenticate to pull from it")
