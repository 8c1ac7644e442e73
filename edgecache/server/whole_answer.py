"""A small answer known whole before it is sent (a manifest from memory), written in
one transport write with headers serialised here.

aiohttp's Response builds a CIMultiDict per answer, checks and serialises it, and
awaits twice more before the bytes go. Without it a cached manifest by digest costs
250k instructions per request instead of 302k (callgrind; the bare aiohttp handler
of bench/bare.py: 180k). An answer's header block is the same on every request but
for the date: it is made once per distinct set of headers and kept.

What aiohttp adds is added the same way, byte for byte (tests/test_whole_answer.py):
Content-Length, Date, Server, and the Connection header that HTTP/1.0 keep-alive and
HTTP/1.1 close need; no body for HEAD. edgecache registers no on_response_prepare
signal (a test holds it to that): these answers would not send it.
"""
from __future__ import annotations

import re
from typing import Mapping

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion10, HttpVersion11

BLOCKS_KEPT = 4096          # distinct header sets kept serialised (a few per manifest)
BLOCK_KEPT_MAX = 1024       # bytes: a larger block (a hostile media type) is made per answer
_blocks: dict[tuple[tuple[str, str], ...], bytes] = {}

# What aiohttp refuses in a header name or value (http_writer.py): every control
# character but tab, and DEL.
_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SERVER = f"\r\nServer: {SERVER_SOFTWARE}".encode()
_KEEP_ALIVE_10 = b"\r\nConnection: keep-alive\r\n\r\n"
_CLOSE_11 = b"\r\nConnection: close\r\n\r\n"
_END = b"\r\n\r\n"


def _block(headers: tuple[tuple[str, str], ...], keep: bool) -> bytes:
    """`headers` as they follow the status line, each line ending in CRLF (UTF-8, as
    aiohttp writes them). `keep`: worth keeping (headers made per request are not)."""
    got = _blocks.get(headers) if keep else None
    if got is None:
        lines = []
        for name, value in headers:
            if _FORBIDDEN.search(name) or _FORBIDDEN.search(value) or ":" in name:
                raise ValueError(f"header {name[:100]!r} cannot be sent: {value[:100]!r}")
            lines.append(f"{name}: {value}\r\n")
        got = "".join(lines).encode()
        if keep and len(got) <= BLOCK_KEPT_MAX:
            if len(_blocks) >= BLOCKS_KEPT:
                _blocks.clear()
            _blocks[headers] = got
    return got


class WholeAnswer(web.StreamResponse):
    """A 200 with `headers` and `body`; sent by prepare(), in one write. Nothing about
    it changes once made: headers, status or cookies set later would be lost, and are
    refused. `keep`: False for headers made per request (a signed sibling's reply)."""

    def __init__(self, body: bytes, headers: Mapping[str, str], *, keep: bool = True) -> None:
        super().__init__()
        self._whole = body
        self._block = _block(tuple(headers.items()), keep)

    async def prepare(self, request: web.BaseRequest) -> None:
        if self._eof_sent:
            return None
        if self._headers or self._status != 200 or self._cookies or self._compression:
            raise RuntimeError("a WholeAnswer is sent as it was made")
        keep_alive = self._keep_alive
        if keep_alive is None:
            keep_alive = self._keep_alive = request.keep_alive
        version = request.version
        n = len(self._whole)
        head = request.method == "HEAD"
        if version == HttpVersion11:
            status = b"HTTP/1.1 200 OK\r\n"
            end = _END if keep_alive else _CLOSE_11
        else:
            status = f"HTTP/{version[0]}.{version[1]} 200 OK\r\n".encode()
            end = _KEEP_ALIVE_10 if keep_alive and version == HttpVersion10 else _END
        # As aiohttp's Response: no Content-Length for an empty HEAD answer.
        length = b"" if head and not n else b"Content-Length: %d\r\n" % n
        parts = [status, self._block, length, b"Date: ", rfc822_formatted_time().encode(),
                 _SERVER, end]
        if not head:
            parts.append(self._whole)
        data = b"".join(parts)
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away before its answer")
        transport.write(data)
        self._eof_sent = True
        self._body_length = len(data)         # as aiohttp counts it: head and body
        protocol = request.protocol
        if protocol._paused:          # the client is not reading: wait as aiohttp would
            await protocol._drain_helper()
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None
