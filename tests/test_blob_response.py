"""server/blob_response.py on real sockets: the bytes a client gets by sendfile and
by copying, headers never overtaken by a body sent beside the transport, HEAD, a
client that takes nothing."""
import asyncio
import os

import pytest
from aiohttp import web

from edgecache.server.blob_response import BlobSender, ClientGone
from tests.support.httpserver import HttpServer

BLOB = os.urandom(3 << 20)


async def _raw_get(port: int, path: str, *, method: str = "GET", wait: float = 0.0) -> bytes:
    """Everything the server sends for one request (Connection: close), read after `wait`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    await asyncio.sleep(wait)
    data = await asyncio.wait_for(reader.read(-1), 30)
    writer.close()
    return data


def _split(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


@pytest.fixture
def blob_file(tmp_path):
    p = tmp_path / "blob"
    p.write_bytes(BLOB)
    return p


def _server(sender: BlobSender, path, outcome: list, junk: int = 0,
            size: int = len(BLOB)) -> HttpServer:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(size)})
        if junk:
            # Bytes already in the transport's buffer behind a socket the client does not
            # read yet: the body (sent beside the transport) must wait for them.
            request.transport.write(b"J" * junk)
        try:
            outcome.append(await sender.send_file(request, resp, str(path), 0, size))
        except Exception as e:   # noqa: BLE001 - the test looks at what it was
            outcome.append(e)
            raise
        return resp
    return HttpServer([web.get("/blob", handler)])     # GET routes answer HEAD too


@pytest.mark.parametrize("use_sendfile", [True, False])
async def test_the_client_gets_exactly_the_bytes_by_either_path(blob_file, use_sendfile):
    sender, outcome = BlobSender(use_sendfile=use_sendfile), []
    try:
        async with _server(sender, blob_file, outcome) as srv:
            head, body = _split(await _raw_get(srv.port, "/blob"))
        assert head.startswith(b"HTTP/1.1 200") and body == BLOB and outcome == [len(BLOB)]
        assert (sender.sendfile_bytes, sender.copied_bytes) == \
            ((len(BLOB), 0) if use_sendfile else (0, len(BLOB)))
    finally:
        sender.close()


async def test_headers_buffered_behind_a_full_socket_go_out_before_the_sendfile_body(blob_file):
    """32 MiB already queued in the transport when the headers are written: the body
    (sendfile, beside the transport) starts only once all of them have left, so
    nothing is interleaved, and the loop waits for that without polling."""
    junk = 32 << 20          # past what loopback's socket buffers hold
    sender, outcome = BlobSender(), []
    try:
        async with _server(sender, blob_file, outcome, junk=junk) as srv:
            raw = await _raw_get(srv.port, "/blob", wait=0.5)
        assert raw[:junk] == b"J" * junk
        head, body = _split(raw[junk:])
        assert head.startswith(b"HTTP/1.1 200") and body == BLOB
        assert sender.sendfile_bytes == len(BLOB)
    finally:
        sender.close()


async def test_head_sends_the_headers_only(blob_file):
    sender, outcome = BlobSender(), []
    try:
        async with _server(sender, blob_file, outcome) as srv:
            head, body = _split(await _raw_get(srv.port, "/blob", method="HEAD"))
        assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {len(BLOB)}".encode() in head
        assert body == b"" and outcome == [0] and sender.sendfile_bytes == 0
    finally:
        sender.close()


async def test_a_client_that_takes_no_bytes_is_let_go_after_idle_timeout(tmp_path):
    big = tmp_path / "big"
    big.write_bytes(BLOB * 16)          # 48 MiB: past what loopback's socket buffers hold
    sender, outcome = BlobSender(idle_timeout=0.5), []
    try:
        async with _server(sender, big, outcome, size=len(BLOB) * 16) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(b"GET /blob HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            for _ in range(100):
                if outcome:
                    break
                await asyncio.sleep(0.05)
            writer.close()
        assert len(outcome) == 1 and isinstance(outcome[0], ClientGone), outcome
        assert 0 < sender.sendfile_bytes < len(BLOB) * 16
    finally:
        sender.close()
