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
from typing import Mapping

from edgecache.config import AccessConfig, UpstreamConfig
from edgecache.addresses import parse_address
from edgecache.credentials import read_htpasswd, read_tokens
from edgecache.errors import Forbidden, Unauthorized
from edgecache.passwords import PasswordChecker, dummy_hash

# bcrypt is slow on purpose (~0.3 s at cost 12): a verified Basic header is remembered
# a while, so a client that sends it on every request pays once.
VERIFIED_TTL = 300.0
VERIFIED_MAX = 10_000


@dataclass(frozen=True)
class Identity:
    name: str
    method: str          # basic | token | cert | sibling


class Access:
    def __init__(self, cfg: AccessConfig, upstreams: Mapping[str, UpstreamConfig]) -> None:
        """Blocking (reads the files): build it off the event loop. `close()` ends
        the bcrypt threads."""
        self.denied = 0
        self._verified: dict[bytes, tuple[Identity, float]] = {}
        self.passwords = PasswordChecker(cfg.password_checks)
        self._apply(*self.read(cfg, upstreams))

    def close(self) -> None:
        self.passwords.close()

    @staticmethod
    def read(cfg: AccessConfig, upstreams: Mapping[str, UpstreamConfig]) -> tuple:
        """Everything the rules are made of, files read (blocking: off the event loop)."""
        users = read_htpasswd(cfg.htpasswd) if cfg.htpasswd else {}
        return (cfg, [ipaddress.ip_network(n, strict=False) for n in cfg.networks], users,
                read_tokens(cfg.tokens_file) if cfg.tokens_file else {},
                {name for name, u in upstreams.items() if not u.public},
                dummy_hash(users) if users else b"")

    def _apply(self, cfg: AccessConfig, networks, users, tokens, private, dummy) -> None:
        # Checks remembered per connection (server/guard.py) hold for one generation.
        self.generation = getattr(self, "generation", 0) + 1
        self.networks = networks
        self.users = users
        self.tokens = tokens
        self.private = private
        self._dummy = dummy
        self.admins = frozenset(cfg.admin)
        # A revoked user's remembered verification must not outlive the reload, nor
        # a remembered failure a password just set.
        self._verified.clear()
        self.passwords.forget_failures()

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

    def check_seeder(self, who: Identity | None, remote: str | None) -> None:
        """Import and export through the daemon name what every client of a route is
        served: only someone in access.admin, or, on a box with no credentials at
        all, its own loopback (the CLI on the box). A node's token is not enough."""
        if self.any_credentials or self.admins:
            if who is None or who.name not in self.admins:
                raise Forbidden("import and export through the daemon need access.admin to "
                                f"name who may ({who.name if who else 'anonymous'} is not in it)")
        elif not (addr := parse_address(remote)) or not addr.is_loopback:
            raise Forbidden("import and export: from this box only (or name access.admin)")

    def check_network(self, remote: str | None) -> None:
        if not self.networks:
            return
        addr = parse_address(remote)
        if addr is None:
            raise Forbidden(f"client address {remote!r} is not allowed")
        if not any(addr in net for net in self.networks):
            self.denied += 1
            raise Forbidden(f"client {addr} is outside access.networks")

    async def identify(self, authorization: str | None, cert_subject: str | None,
                       client: str | None = None) -> Identity | None:
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
                return await self._basic(value.strip(), client or "")
            self.denied += 1
            raise Unauthorized(f"unsupported authorization scheme {scheme!r}")
        if cert_subject:
            return Identity(cert_subject, "cert")
        return None

    def _token_named(self, user: str, password: str) -> str | None:
        """The token's name when password is a token issued to the name `user`."""
        found = None
        for token, name in self.tokens.items():
            if hmac.compare_digest(token.encode(), password.encode()) and name == user:
                found = name
        return found

    async def _basic(self, value: str, client: str) -> Identity | None:
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
        if (name := self._token_named(user, password)) is not None:
            # A token as the password of its name: what clients that speak only Basic
            # (containerd's registries.yaml, docker and podman login) can send. No bcrypt.
            return Identity(name, "token")
        hashed = self.users.get(user)
        # An unknown user is hashed too (against the dummy): the same time as a wrong
        # password, so names cannot be told apart. Bounded threads, fair per client.
        ok = bool(self.users) and await self.passwords.check(
            client, key, password.encode(), hashed or self._dummy)
        if not ok or hashed is None:
            self.denied += 1
            raise Unauthorized("wrong user name or password")
        ident = Identity(user, "basic")
        if len(self._verified) >= VERIFIED_MAX:
            self._verified.clear()
        self._verified[key] = (ident, now + VERIFIED_TTL)
        return ident

    def check_upstream(self, upstream: str, who: Identity | None) -> None:
        if upstream in self.private and who is None:
            self.denied += 1
            raise Unauthorized(f"{upstream} is private: authenticate to pull from it")
