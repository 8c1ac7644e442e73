"""server/blob_response.py on real sockets: the bytes a client gets by sendfile and
by copying (plain and TLS, from the page cache or the disk), headers never overtaken
by a body sent beside the transport, HEAD, a client that takes nothing."""
import asyncio
import errno
import os
import ssl
from pathlib import Path

import pytest
import uvloop
from aiohttp import web

from edgecache.config import ListenerTLS
from edgecache.server.blob_response import COPY_CHUNK, TLS_PIECE, BlobSender, ClientGone
from edgecache.server.guard import listener_ssl_context
from tests.support.certs import make_certs
from tests.support.httpserver import HttpServer

BLOB = os.urandom(3 << 20)

# Every test on both loops (conftest.py): production runs uvloop, whose transports keep
# the buffers they are handed where asyncio's copy them.
LOOP_FACTORIES = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


async def _raw_get(port: int, path: str, *, method: str = "GET", wait: float = 0.0,
                   tls: bool = False) -> bytes:
    """Everything the server sends for one request (Connection: close), read after `wait`."""
    ctx = None
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
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


def _listener_context(tmp_path) -> ssl.SSLContext:
    """The server side of a TLS listener, as edgecache makes it, with a throwaway certificate."""
    certs = make_certs(tmp_path / "certs")
    return listener_ssl_context(ListenerTLS(cert_file=certs.server_cert, key_file=certs.server_key))


class _Keeping(web.StreamResponse):
    """A response that keeps every buffer the body hands it, with what it said when
    handed over: as a transport that holds views of the bytes it could not send yet."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.kept: list[tuple[memoryview, bytes]] = []

    async def write(self, data) -> None:
        self.kept.append((memoryview(data), bytes(data)))
        await super().write(data)


def _server(sender: BlobSender, path, outcome: list, junk: int = 0,
            size: int = len(BLOB), ssl_ctx: ssl.SSLContext | None = None,
            responses: list | None = None) -> HttpServer:
    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Length": str(size)}
        resp = web.StreamResponse(headers=headers) if responses is None else _Keeping(headers=headers)
        if responses is not None:
            responses.append(resp)
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
    return HttpServer([web.get("/blob", handler)], ssl_ctx=ssl_ctx)   # GET answers HEAD too


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


BIG = os.urandom(48 * COPY_CHUNK + 12345)   # 24 MiB: more than loopback's socket buffers hold


def _reads_without_waiting(path) -> bool:
    """Whether path's file system takes RWF_NOWAIT (tmpfs does not)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


@pytest.fixture
def big_file(tmp_path):
    p = tmp_path / "big"
    p.write_bytes(BIG)
    if not _reads_without_waiting(p):
        pytest.skip(f"{tmp_path}'s file system does not take RWF_NOWAIT")
    return p


def _drop_from_page_cache(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.mark.parametrize("tls", [False, True])
async def test_a_slow_client_of_the_copying_path_gets_every_chunk_intact(tmp_path, big_file, tls):
    """Chunks are read into one buffer, refilled only when nothing holds it: here the
    plain transport keeps chunks it could not send while the client waits, and the
    chunks read meanwhile must not overwrite them. Over TLS each chunk goes out in
    pieces, views of that buffer, while the client waits too."""
    ctx = _listener_context(tmp_path) if tls else None
    sender, outcome = BlobSender(use_sendfile=False), []
    try:
        async with _server(sender, big_file, outcome, size=len(BIG), ssl_ctx=ctx) as srv:
            head, body = _split(await _raw_get(srv.port, "/blob", wait=0.5, tls=tls))
        assert head.startswith(b"HTTP/1.1 200") and outcome == [len(BIG)]
        assert body == BIG
        assert sender.thread_reads == 0 and sender.copied_bytes == len(BIG)
    finally:
        sender.close()


@pytest.mark.parametrize("cached", [True, False])
async def test_the_copying_path_over_tls_from_the_page_cache_or_the_disk(tmp_path, big_file, cached):
    """TLS bodies are copied: chunks the page cache holds are read on the loop, the
    others (here dropped from the cache) by a thread; the client gets the same bytes.

    Dropped from the cache, a chunk may still be read on the loop: a RWF_NOWAIT read
    that misses starts the kernel's readahead, which a fast disk can finish before the
    read looks again (seen in CI: no chunk went to a thread). So here a dropped file is
    read at most chunk by chunk by threads; that a miss goes to a thread every time is
    the test below's, where misses are made certain."""
    ctx = _listener_context(tmp_path)
    if not cached:
        _drop_from_page_cache(big_file)
    sender, outcome = BlobSender(), []
    try:
        async with _server(sender, big_file, outcome, size=len(BIG), ssl_ctx=ctx) as srv:
            head, body = _split(await _raw_get(srv.port, "/blob", wait=0.3, tls=True))
        assert head.startswith(b"HTTP/1.1 200") and body == BIG and outcome == [len(BIG)]
        assert sender.sendfile_bytes == 0 and sender.copied_bytes == len(BIG)
        chunks = -(-len(BIG) // COPY_CHUNK)
        assert sender.thread_reads == 0 if cached else sender.thread_reads <= chunks
    finally:
        sender.close()


@pytest.mark.parametrize("tls", [False, True])
async def test_tls_bodies_go_out_in_pieces_and_held_pieces_are_never_rewritten(tmp_path, big_file, tls):
    """Over TLS each chunk is handed over in pieces of at most TLS_PIECE (plain copying:
    whole chunks); every piece a holder still keeps says what it said when handed over:
    the body's buffer is refilled only when nothing holds a view of it."""
    ctx = _listener_context(tmp_path) if tls else None
    sender, outcome, responses = BlobSender(use_sendfile=False), [], []
    try:
        async with _server(sender, big_file, outcome, size=len(BIG), ssl_ctx=ctx,
                           responses=responses) as srv:
            head, body = _split(await _raw_get(srv.port, "/blob", tls=tls))
        assert body == BIG and outcome == [len(BIG)]
        kept = responses[0].kept
        sizes = [len(view) for view, _ in kept]
        assert sum(sizes) == len(BIG)
        chunks = [min(COPY_CHUNK, len(BIG) - at) for at in range(0, len(BIG), COPY_CHUNK)]
        if tls:
            assert max(sizes) == TLS_PIECE
            assert len(sizes) == sum(-(-c // TLS_PIECE) for c in chunks)
        else:
            assert sizes == chunks
        assert all(bytes(view) == said for view, said in kept)
    finally:
        sender.close()


@pytest.mark.parametrize("tls", [False, True])
async def test_chunks_the_page_cache_misses_are_read_by_a_thread_between_the_loops_own(
        tmp_path, big_file, tls, monkeypatch):
    """A page-cache miss is decided by the kernel (readahead can hide it, see above), so
    here every other chunk's read without waiting is refused as the kernel refuses it
    (EAGAIN): those chunks and only those go to a thread, and the body, mixing chunks
    read on the loop into the reused buffer with the threads' own, is intact."""
    real = os.preadv

    def preadv(fd, buffers, offset, flags=0):
        if flags & os.RWF_NOWAIT and (offset // COPY_CHUNK) % 2:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return real(fd, buffers, offset, flags)
    monkeypatch.setattr(os, "preadv", preadv)
    ctx = _listener_context(tmp_path) if tls else None
    sender, outcome = BlobSender(use_sendfile=False), []
    try:
        async with _server(sender, big_file, outcome, size=len(BIG), ssl_ctx=ctx) as srv:
            head, body = _split(await _raw_get(srv.port, "/blob", wait=0.3, tls=tls))
        assert body == BIG and outcome == [len(BIG)]
        chunks = -(-len(BIG) // COPY_CHUNK)
        assert sender.thread_reads == chunks // 2 and sender.read_on_loop
    finally:
        sender.close()


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
async def test_a_file_system_without_rwf_nowait_is_read_by_threads():
    """tmpfs refuses RWF_NOWAIT (EOPNOTSUPP): the sender stops trying and reads by thread."""
    shm = Path("/dev/shm") / f"edgecache-test-{os.getpid()}"
    shm.write_bytes(BLOB)
    sender, outcome = BlobSender(use_sendfile=False), []
    try:
        async with _server(sender, shm, outcome) as srv:
            head, body = _split(await _raw_get(srv.port, "/blob"))
        assert body == BLOB and outcome == [len(BLOB)]
        assert sender.read_on_loop is False
        assert sender.thread_reads == -(-len(BLOB) // COPY_CHUNK)
    finally:
        sender.close()
        shm.unlink()


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
