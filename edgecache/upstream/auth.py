"""Registry authentication: Bearer tokens (the Docker token protocol) and Basic.

Tokens are cached per scope until they expire; concurrent requests that need
the same token share one token request.
"""
from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass

from edgecache.singleflight import SingleFlight

_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


@dataclass(frozen=True)
class Challenge:
    scheme: str                      # "bearer" or "basic"
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """Parse `WWW-Authenticate: Bearer realm="...",service="...",scope="..."`."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _PARAM.finditer(rest)}
    return Challenge(scheme.lower(), params)


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@dataclass
class Token:
    value: str
    expires_at: float


class TokenCache:
    """Bearer tokens by scope, fetched once for all concurrent callers."""

    # Refresh a little early so a token does not expire on its way upstream.
    MARGIN = 10.0

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[str, Token] = {}
        self._flight = SingleFlight()

    def get(self, scope: str) -> str | None:
        t = self._tokens.get(scope)
        if t and t.expires_at > self._clock():
            return t.value
        return None

    async def fetch(self, scope: str, fetcher) -> str:
        """Run `fetcher()` -> (token, expires_in) once for all concurrent callers (a
        caller that goes away does not cancel it for the others)."""
        return await self._flight.do(scope, lambda: self._fetch(scope, fetcher))

    async def _fetch(self, scope: str, fetcher) -> str:
        value, expires_in = await fetcher()
        self._tokens[scope] = Token(value, self._clock() + max(1.0, expires_in - self.MARGIN))
        return value
