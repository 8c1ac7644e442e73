"""aiohttp's client exceptions (and the socket errors under them), classified once,
for both HTTP clients: the upstream's (upstream/client.py) and the siblings'
(siblings/client.py). Each turns the kind into its own domain error."""
from __future__ import annotations

import asyncio
import enum

import aiohttp


class Failure(enum.StrEnum):
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    BAD_RESPONSE = "bad_response"


def classify(e: BaseException) -> Failure | None:
    """The kind of a failure to talk to a server; None for anything else (a bug:
    the caller re-raises it)."""
    if isinstance(e, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return Failure.TIMEOUT
    if isinstance(e, (aiohttp.ClientConnectionError, OSError)):
        return Failure.UNREACHABLE
    if isinstance(e, aiohttp.ClientError):
        return Failure.BAD_RESPONSE
    return None


def described(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"
