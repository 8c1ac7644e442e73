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
copying path.
"""
from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from edgecache.pull.fill import Fill

COPY_CHUNK = 1 << 20
# The most one sendfile call is asked for; a non-blocking socket takes what fits anyway.
SENDFILE_CHUNK = 1 << 30


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
        await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        raise ClientGone(f"client took no bytes for {timeout:.0f}s") from None
    finally:
        loop.remove_writer(fd)


class BlobSender:
    """Owns the thread pool that runs sendfile; one per app."""

    def __init__(self, threads: int = 16, idle_timeout: float = 120.0,
                 use_sendfile: bool = True) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="edgecache-sendfile")
        self.idle_timeout = idle_timeout
        self.use_sendfile = use_sendfile and hasattr(os, "sendfile")
        self.sendfile_bytes = 0
        self.copied_bytes = 0

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def send_file(self, request: web.Request, resp: web.StreamResponse, path: str,
                        offset: int, count: int) -> int:
        """Prepare resp (status and headers already set) and send [offset, offset+count)."""
        loop = asyncio.get_running_loop()
        fd = await loop.run_in_executor(self._pool, os.open, path, os.O_RDONLY)
        owned = [fd]            # descriptors to close on the way out, unless a thread still holds them
        try:
            writer = await resp.prepare(request)
            if count == 0 or request.method == "HEAD":
                await resp.write_eof()
                return 0
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ClientGone("connection lost before the body")
            sock = transport.get_extra_info("socket")
            if (not self.use_sendfile or sock is None
                    or transport.get_extra_info("sslcontext") is not None):
                return await self._copy(resp, fd, offset, count)
            # Push the buffered status line and headers out before we write beside them.
            writer.send_headers()                 # type: ignore[attr-defined]
            while transport.get_write_buffer_size():
                if transport.is_closing():
                    raise ClientGone("connection lost while sending headers")
                await asyncio.sleep(0.001)
            owned.append(os.dup(sock.fileno()))
            try:
                sent = await self._sendfile(owned, offset, count)
            except (TimeoutError, EOFError, ClientGone, OSError) as e:
                transport.abort()
                raise ClientGone(str(e)) from None
            await resp.write_eof()
            return sent
        finally:
            for d in owned:
                os.close(d)

    async def _sendfile(self, owned: list[int], offset: int, count: int) -> int:
        """Drive the sendfile thread over owned = [file fd, dup of the socket fd]."""
        fd, sock_fd = owned
        loop = asyncio.get_running_loop()
        sent = 0
        fut: asyncio.Future | None = None
        try:
            while sent < count:
                fut = loop.run_in_executor(self._pool, _sendfile_until_blocked, sock_fd, fd,
                                           offset + sent, count - sent)
                n, blocked = await asyncio.shield(fut)
                sent += n
                self.sendfile_bytes += n
                if blocked:
                    await _writable(sock_fd, self.idle_timeout)
            return sent
        finally:
            if fut is not None and not fut.done():
                # Cancelled while a thread is mid-call: it still uses both descriptors, so
                # they are closed after it returns, never under it (a recycled fd number
                # could otherwise receive another client's bytes).
                held = list(owned)
                owned.clear()
                fut.add_done_callback(lambda _f: [os.close(d) for d in held])

    async def _copy(self, resp: web.StreamResponse, fd: int, offset: int, count: int) -> int:
        loop = asyncio.get_running_loop()
        pos, end = offset, offset + count
        while pos < end:
            data = await loop.run_in_executor(self._pool, os.pread, fd, min(COPY_CHUNK, end - pos), pos)
            if not data:
                raise StreamAborted(f"file ended at {pos}")
            await resp.write(data)
            pos += len(data)
        self.copied_bytes += count
        await resp.write_eof()
        return count

    async def send_fill(self, request: web.Request, resp: web.StreamResponse, fill: Fill,
                        start: int, end: int | None) -> int:
        """Stream [start, end) of a fill as it grows; cut the connection if the fill fails."""
        await resp.prepare(request)
        if request.method == "HEAD":
            await resp.write_eof()
            return 0
        sent = 0
        try:
            async for chunk in fill.read(start, end):
                await resp.write(chunk)
                sent += len(chunk)
        except (ConnectionResetError, ConnectionError):
            raise ClientGone("client went away during a fill") from None
        except Exception as e:   # noqa: BLE001 - any failure of the fill: the body must not complete
            if request.transport is not None:
                request.transport.abort()
            raise StreamAborted(f"fill of {fill.digest} failed: {e}") from e
        self.copied_bytes += sent
        await resp.write_eof()
        return sent
