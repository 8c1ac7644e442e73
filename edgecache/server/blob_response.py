"""Sending blob bodies: cached files with the kernel's sendfile, fills as they grow.

uvloop does not implement loop.sendfile (aiohttp then silently copies through
user space, about a third of the speed). So we flush the headers through the
transport, then run os.sendfile on a duplicate of the connection's socket on a
thread of our own until the range is sent: zero-copy under uvloop and asyncio
alike. A thread sends until the socket is full, then the loop waits for it to
drain (add_writer on the duplicate), so a slow client holds no thread. The
duplicate descriptor keeps the socket alive for the thread even if the event
loop closes its own descriptor meanwhile, so bytes can never go to a recycled
descriptor. TLS connections (or a platform without sendfile) take the
copying path: a chunk read on the loop when the page cache holds it (preadv2
with RWF_NOWAIT does not wait for disk I/O; a thread reads what it does not
hold), into a buffer the body reuses, then written through the transport (over TLS in
pieces that the encryption's copies find in the CPU's cache).
"""
from __future__ import annotations

import asyncio
import errno
import os
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from edgecache.pull.fill import Fill
from edgecache.store.reading import open_for_reading

# The copying path's chunk. Over TLS, 8 clients of a warm blob (2 cores): 512 KiB was the
# fastest; 1 MiB no faster, with about 2 MiB more in flight per client (plaintext, the SSL BIO's
# ciphertext, the transport's copy); 128 KiB 10% slower.
COPY_CHUNK = 1 << 19
# Over TLS a chunk goes to the transport in pieces: uvloop encrypts each write into a memory
# BIO, which OpenSSL zeroes before it copies in, and copies it out again for the socket; a piece
# small enough to stay in the CPU's cache makes those copies cheap. 8 TLS clients of a warm blob
# (2 cores, loopback), edgecache's CPU per GB: the whole 512 KiB at once 0.71-0.74 s; pieces of
# 48-64 KiB 0.64-0.68, 96 KiB 0.61-0.62, 112-124 KiB 0.61-0.63; 128 KiB 0.80-0.86 (a socket write
# of 128 KiB or more cost the kernel's loopback delivery twice as much).
TLS_PIECE = 96 << 10
# The most one sendfile call is asked for; a non-blocking socket takes what fits anyway.
SENDFILE_CHUNK = 1 << 30


# Not domain errors (errors.py): connection signals, ConnectionResetError on purpose, so
# aiohttp and the error middleware take them as the connection gone (499, one log line).
class ClientGone(ConnectionResetError):
    """The client went away or stalled mid-body; the connection is closed."""


class StreamAborted(ConnectionResetError):
    """The body's source failed; the response is cut so the client sees an error."""


def _sendfile_until_blocked(sock_fd: int, file_fd: int, offset: int, count: int) -> tuple[int, bool]:
    """Send from file_fd at offset until done or the socket is full: (bytes sent, would block)."""
    sent = 0
    while sent < count:
        try:
            n = os.sendfile(sock_fd, file_fd, offset + sent, min(count - sent, SENDFILE_CHUNK))
        except BlockingIOError:
            return sent, True
        except (BrokenPipeError, ConnectionResetError) as e:
            if sent:
                return sent, False     # report progress first; the next call raises again
            raise ClientGone(str(e)) from None
        if n == 0:
            raise EOFError(f"file ended at {offset + sent}, {count - sent} bytes short")
        sent += n
    return sent, False


async def _writable(fd: int, timeout: float) -> None:
    """Wait until the socket takes bytes again: a slow client holds no thread meanwhile."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    loop.add_writer(fd, lambda: fut.done() or fut.set_result(None))
    try:
        async with asyncio.timeout(timeout):
            await fut
    except TimeoutError:
        raise ClientGone(f"client took no bytes for {timeout:.0f}s") from None
    finally:
        loop.remove_writer(fd)


def _unheld(buf: bytearray) -> bool:
    """Whether no view of buf is alive (a transport keeping the bytes it was handed holds
    one): a bytearray cannot be resized while any is."""
    try:
        buf.append(buf.pop())       # the same length and allocation again: no realloc
    except BufferError:
        return False
    return True


class BlobSender:
    """Owns the thread pool that runs sendfile; one per app."""

    def __init__(self, threads: int = 16, idle_timeout: float = 120.0,
                 use_sendfile: bool = True) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="edgecache-sendfile")
        self.idle_timeout = idle_timeout
        self.use_sendfile = use_sendfile and hasattr(os, "sendfile")
        # A warm chunk is read on the loop: a thread's round trip per chunk cost a fifth
        # of the copying path's CPU over TLS. Off where the platform lacks RWF_NOWAIT.
        self.read_on_loop = hasattr(os, "RWF_NOWAIT")
        self.sendfile_bytes = 0
        self.copied_bytes = 0
        self.thread_reads = 0           # copied chunks a thread read: not in the page cache

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def send_file(self, request: web.Request, resp: web.StreamResponse, path: str,
                        offset: int, count: int) -> int:
        """Prepare resp (status and headers already set) and send [offset, offset+count) of path."""
        loop = asyncio.get_running_loop()
        fd = await loop.run_in_executor(self._pool, open_for_reading, path)
        body = _Body(self, request, resp, [fd])
        try:
            if not await body.start() or count == 0:
                return await body.finish()
            await body.send(offset, count)
            return await body.finish()
        finally:
            await body.close()

    async def send_fill(self, request: web.Request, resp: web.StreamResponse, fill: Fill,
                        start: int, end: int | None) -> int:
        """Send [start, end) of a fill as it grows; cut the connection if the fill fails."""
        fd = await fill.open_fd()
        body = _Body(self, request, resp, [fd] if fd is not None else [])
        try:
            if not await body.start():
                return await body.finish()
            try:
                async for item in fill.spans(start, end):
                    if isinstance(item, bytes):
                        await body.send_bytes(item)       # relayed from memory (disk full)
                    else:
                        await body.send(*item)
            except ClientGone:
                raise
            except Exception as e:   # noqa: BLE001 - any failure of the fill: the body must not complete
                body.abort()
                raise StreamAborted(f"fill of {fill.digest} failed: {e}") from e
            return await body.finish()
        finally:
            await body.close()


class _Body:
    """One response body sent from a file descriptor, by sendfile or by copying."""

    def __init__(self, sender: BlobSender, request: web.Request, resp: web.StreamResponse,
                 owned: list[int]) -> None:
        self.sender = sender
        self.request = request
        self.resp = resp
        self.fd = owned[0] if owned else -1
        self.sock_fd: int | None = None
        self.owned = owned              # closed at the end, unless a thread still holds them
        self.sent = 0
        self._thread: asyncio.Future | None = None
        self._buf: bytearray | None = None     # the copying path's chunks, read on the loop
        self._piece = 0                 # over TLS: the most handed to the transport at once

    async def start(self) -> bool:
        """Send the headers; False when there is to be no body (HEAD)."""
        writer = await self.resp.prepare(self.request)
        if self.request.method == "HEAD":
            return False
        transport = self.request.transport
        if transport is None or transport.is_closing():
            raise ClientGone("connection lost before the body")
        sock = transport.get_extra_info("socket")
        if transport.get_extra_info("sslcontext") is not None:
            self._piece = TLS_PIECE
            return True                 # the copying path: aiohttp frames the body
        if (not self.sender.use_sendfile or sock is None or self.resp.chunked
                or self.resp.content_length is None):
            return True
        # Push the buffered status line and headers out before we write beside them.
        writer.send_headers()           # type: ignore[attr-defined]
        if transport.get_write_buffer_size():
            await self._headers_sent(writer, transport)
        self.sock_fd = os.dup(sock.fileno())
        self.owned.append(self.sock_fd)
        return True

    async def _headers_sent(self, writer, transport: asyncio.Transport) -> None:
        """Until the transport's buffer (the headers, behind a full socket) is empty:
        with a high-water mark of 0 the protocol is paused while anything is buffered,
        and drain() returns when the transport resumes it."""
        low, high = transport.get_write_buffer_limits()
        transport.set_write_buffer_limits(high=0)
        try:
            async with asyncio.timeout(self.sender.idle_timeout):
                await writer.drain()
        except TimeoutError:
            self.abort()            # headers promised a body that will not come
            raise ClientGone(f"client took no bytes for {self.sender.idle_timeout:.0f}s") from None
        except ConnectionError as e:
            self.abort()
            raise ClientGone(f"connection lost while sending headers: {e}") from None
        finally:
            if not transport.is_closing():
                transport.set_write_buffer_limits(high=high, low=low)
        if transport.is_closing():
            raise ClientGone("connection lost while sending headers")

    async def send(self, offset: int, count: int) -> None:
        try:
            if self.sock_fd is None:
                await self._copy(offset, count)
            else:
                await self._sendfile(offset, count)
        except (TimeoutError, EOFError, ClientGone, OSError) as e:
            self.abort()
            raise ClientGone(str(e)) from None

    async def send_bytes(self, data: bytes) -> None:
        try:
            await self._write(data)
        except (TimeoutError, ConnectionError) as e:
            self.abort()
            raise ClientGone(str(e)) from None
        self.sent += len(data)
        self.sender.copied_bytes += len(data)

    async def _sendfile(self, offset: int, count: int) -> None:
        assert self.sock_fd is not None
        loop = asyncio.get_running_loop()
        done = 0
        while done < count:
            self._thread = loop.run_in_executor(self.sender._pool, _sendfile_until_blocked,
                                                self.sock_fd, self.fd, offset + done, count - done)
            n, blocked = await asyncio.shield(self._thread)
            done += n
            self.sent += n
            self.sender.sendfile_bytes += n
            if blocked:
                await _writable(self.sock_fd, self.sender.idle_timeout)

    async def _copy(self, offset: int, count: int) -> None:
        loop = asyncio.get_running_loop()
        pos, end = offset, offset + count
        while pos < end:
            want = min(COPY_CHUNK, end - pos)
            data: bytes | memoryview | None = None
            if self.sender.read_on_loop:
                n = self._read_cached(want, pos)
                if n:
                    data = memoryview(self._buf)[:n]       # type: ignore[index]
            if data is None:
                self.sender.thread_reads += 1
                self._thread = loop.run_in_executor(self.sender._pool, os.pread, self.fd, want, pos)
                data = await asyncio.shield(self._thread)
            if not data:
                raise EOFError(f"file ended at {pos}")
            await self._write(data)
            n = len(data)
            del data                # the buffer is free again once the transport let go
            pos += n
            self.sent += n
            self.sender.copied_bytes += n

    async def _write(self, data: bytes | memoryview) -> None:
        """Through aiohttp's writer (it frames and counts the body); over TLS in pieces.
        A client that takes no bytes for idle_timeout is let go (sendfile: _writable)."""
        async with asyncio.timeout(self.sender.idle_timeout):
            if not self._piece or len(data) <= self._piece:
                await self.resp.write(data)
                return
            view = memoryview(data)
            try:
                for at in range(0, len(view), self._piece):
                    await self.resp.write(view[at:at + self._piece])
            finally:
                view.release()          # the body's buffer is free again once the transport is

    def _read_cached(self, count: int, offset: int) -> int:
        """Up to count bytes at offset, from the page cache without waiting for the disk,
        into the body's buffer: 0 when the cache does not hold the first of them.

        The buffer is refilled only when nothing else holds it: the SSL transport encrypts
        a write at once and lets go; one that keeps the bytes (uvloop's, behind a full
        plain socket) holds a view, and the next chunk gets a new buffer."""
        if self._buf is None or len(self._buf) < count or not _unheld(self._buf):
            # Doubled up to a chunk: a fill's spans grow, and each would otherwise get one.
            self._buf = bytearray(max(count, min(COPY_CHUNK, 2 * len(self._buf or b""))))
        try:
            return os.preadv(self.fd, [memoryview(self._buf)[:count]], offset, os.RWF_NOWAIT)
        except BlockingIOError:
            return 0
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                self.sender.read_on_loop = False   # a file system or kernel without RWF_NOWAIT
            return 0    # a thread reads it, and meets the error again if it is the file's

    async def finish(self) -> int:
        await self.resp.write_eof()
        return self.sent

    def abort(self) -> None:
        if self.request.transport is not None:
            self.request.transport.abort()

    async def close(self) -> None:
        held, self.owned = self.owned, []
        if self._thread is not None and not self._thread.done():
            # Cancelled while a thread is mid-call: it still uses the descriptors, so they
            # are closed after it returns, never under it (a recycled descriptor number
            # could otherwise receive another client's bytes).
            self._thread.add_done_callback(lambda _f: [os.close(d) for d in held])
            return
        # Off the loop: the last close of a large unlinked file frees its blocks.
        await asyncio.to_thread(lambda: [os.close(d) for d in held])
