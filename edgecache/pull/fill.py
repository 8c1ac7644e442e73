"""Filling the cache once per digest, streamed to every waiting client.

A Fill copies one blob from a source (the upstream, or a sibling) into the
store's BlobWriter (store/writer.py: the temp file, the hash, the commit) and
fans it out: any number of readers follow the growing temp file, each through
its own duplicate of a read-only descriptor, so they can sendfile from it like
from any cached blob. The fill runs as its own task: a client that goes away
does not stop it (pull/fills.py: single flight, and abandoning fills nobody
wants). A disk that fills up meanwhile turns it into a relay from memory
(pull/relay.py). Its states are FillState's.

No reader ever completes a response with unverified bytes: each reader holds
back the last byte of its range until the whole blob has been verified, and a
failed fill raises in every reader, which then aborts its connection.

A source that is not `trusted` (a sibling cache) is held back entirely: readers
get neither headers nor bytes until the whole blob is verified. If such a source
fails in any way (gone, stalled, wrong bytes) the fill starts over from its
`fallback` (the upstream), and no client ever notices. A transfer that takes
longer than HOLD_LIMIT (a sibling relaying a slow WAN) is released to stream like
any other, last byte held: clients must not wait minutes for a first byte (the
container runtimes give up). If that sibling then fails, the fill goes on from the
upstream where it stopped; only wrong bytes already sent cannot be taken back,
and those fail the fill, as from the upstream.

Longer than most modules on purpose: the writing side and the readers share one
state (bytes landed, verification, the relay) and one change signal; split, that
state would sit behind an interface with a single user.
"""
from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import time
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import AsyncIterator, Callable, Iterator, Protocol

from edgecache.errors import (BlobTooLarge, DigestMismatch, FillAbandoned, SiblingError,
                              SizeMismatch, StoreFull)
from edgecache.pull.relay import MemoryRelay
from edgecache.reference import Digest
from edgecache.store.blobs import BlobStore
from edgecache.store.reading import open_for_reading

log = logging.getLogger("edgecache.fill")

READ_CHUNK = 1 << 20
HOLD_LIMIT = 10.0          # seconds an untrusted source's bytes are held back at most
_reader_ids = itertools.count()


class Source(Protocol):
    """An open blob body: its announced size (or None) and its bytes.

    Optional: `trusted = False` (held until verified, see above), `name` (for logs
    and metrics), `reject(err)` (told why its bytes were refused).
    """

    size: int | None

    async def read(self, n: int = READ_CHUNK) -> bytes: ...


SourceFactory = Callable[[], AbstractAsyncContextManager[Source]]
# The upstream, from a byte offset on: where a fill goes when a sibling fails it.
FallbackFactory = Callable[[int], AbstractAsyncContextManager[Source]]


class SourceKind(enum.StrEnum):
    UPSTREAM = "upstream"
    SIBLING = "sibling"


class FillState(enum.Enum):
    STARTING = "starting"       # no source has answered yet
    HELD = "held"               # an untrusted source: nothing goes out before verification
    STREAMING = "streaming"     # bytes go out as they land, the last one held back
    VERIFIED = "verified"       # whole and right: readers may finish; the store commits it
    STORED = "stored"           # in the store (the blob is the store's now)
    NOT_STORED = "not stored"   # verified and served, not kept: `commit_error` says why
    FAILED = "failed"           # `error` says why, to every reader


_WHOLE = frozenset({FillState.VERIFIED, FillState.STORED, FillState.NOT_STORED})


class Fill:
    def __init__(self, digest: Digest, store: BlobStore, open_source: SourceFactory,
                 expected_size: int | None, source_name: str, origin: object = None,
                 fallback: FallbackFactory | None = None, kind: SourceKind | None = None,
                 link: tuple[str, str] | None = None) -> None:
        self.digest = digest
        self.link = link                # the (upstream, repository) the blob is linked to when stored
        # Routes whose upstream vouched for this digest while it was under way: linked
        # too once *these* bytes are verified (they came from `link`'s upstream).
        self.joined_by: set[tuple[str, str]] = set()
        self.store = store
        self.writer = store.writer(digest)
        self.source_name = source_name
        self._default_name = source_name
        self.origin = origin            # where the bytes come from (the caller's route)
        self._open_source = open_source
        self._fallback = fallback
        self._expected = expected_size
        self.state = FillState.STARTING
        self.source_kind: SourceKind | None = None      # once decided
        self.source_known = asyncio.Event()
        if kind is not None:
            self.announce(kind)
        self.size: int | None = expected_size
        self.written = 0
        self.error: BaseException | None = None
        self.commit_error: BaseException | None = None
        self.done = False               # the task has ended, whatever the state
        self.relay: MemoryRelay | None = None    # the disk filled up: the rest from memory
        self._positions: dict[int, int] = {}     # each reader's offset
        self._uncounted: asyncio.Future[None] | None = None     # the write not yet in `written`
        self._untrusted: Source | None = None    # the sibling a resumed fill began with
        self.resumed_at = 0                      # bytes the sibling had sent when the upstream took over
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._headers_known = asyncio.Event()    # size known (or failure): readers can answer
        self.task: asyncio.Task[None] | None = None
        # Who still wants it: readers and waiters now; since when nobody (loop time).
        self.keep = False                        # sync work: finished whoever waits
        self.abandoned = False
        self.interest = 0
        self.idle_since: float | None = asyncio.get_running_loop().time()
        self.on_idle: Callable[["Fill"], None] | None = None

    @property
    def held(self) -> bool:
        return self.state is FillState.HELD

    @property
    def verified(self) -> bool:
        return self.state in _WHOLE

    @property
    def stored(self) -> bool:
        return self.state is FillState.STORED

    def _set(self, state: FillState) -> None:
        self.state = state
        self._notify()

    # -- the writer --------------------------------------------------------------

    def announce(self, kind: SourceKind | str) -> None:
        """Where the bytes will come from, as soon as that is decided (before the
        source answers): a sibling asking for this blob may join an upstream fill only."""
        self.source_kind = SourceKind(kind)
        self.source_known.set()

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"fill {self.digest}")

    async def _run(self) -> None:
        try:
            try:
                await self.writer.open()
            except StoreFull:
                self._to_memory_mode()
            await self._take_with_failover()
            await self.writer.done_writing()
            # The bytes are right: readers may finish now, while the store fsyncs and
            # renames (durability of the cache is not the clients' wait).
            self._headers_known.set()
            self._set(FillState.VERIFIED)
            if self.relay is not None:
                # Served to its clients from memory; nothing half-written is kept.
                self.commit_error = StoreFull("disk full under data_dir: not cached")
                self._set(FillState.NOT_STORED)
                await self.writer.discard()
                return
            await self._commit()
        except BaseException as e:   # noqa: BLE001 - every failure is handed to the readers
            cancelled = isinstance(e, asyncio.CancelledError)
            if isinstance(e, StoreFull):
                self.store.note_disk_full(time.time())
            (log.info if cancelled else log.warning)(
                "fill of %s from %s %s after %d bytes: %r", self.digest, self.source_name,
                "cancelled" if cancelled else "failed", self.written, e)
            # Clean up first, then tell the readers: when a client sees the abort, the
            # partial file is already gone.
            await self.writer.discard()
            self.error = FillAbandoned(f"nobody waited for {self.digest} any more") \
                if self.abandoned and cancelled else e
            self._set(FillState.FAILED)
            if cancelled:
                raise
        finally:
            self.store.release(self)          # stored by now, or gone
            self.done = True
            self.source_known.set()
            self._headers_known.set()
            self._notify()
            await self.writer.close()

    async def _commit(self) -> None:
        """Into the store, linked to its own route firmly and to the routes that
        joined on their upstream's word as such (store/links.py caps those)."""
        try:
            joined = set(self.joined_by)
            # Shielded: a shutdown must not leave a renamed blob the index never heard of.
            commit = asyncio.ensure_future(self.writer.commit(
                size=self.size or 0, links=[self.link] if self.link else [], vouched=joined,
                reserved_by=self))
            try:
                await asyncio.shield(commit)
            except asyncio.CancelledError:
                await asyncio.wait([commit])
                raise
            self._set(FillState.STORED)
            for late in self.joined_by - joined:    # joined while the commit ran
                await self.store.link([self.digest], late, vouched=True)
        except Exception as e:   # noqa: BLE001 - the clients still get their verified bytes
            self.commit_error = e
            if not self.stored:
                self._set(FillState.NOT_STORED)
            if isinstance(e, StoreFull):
                self.store.note_disk_full(time.time())
            log.warning("could not store %s: %s", self.digest, e)

    async def _take_with_failover(self) -> None:
        """All of the blob, verified: from the source, or, when that is a sibling and
        fails, from the upstream (over again, or from where the sibling stopped)."""
        try:
            await self._take(self._open_source)
        except Exception as e:   # noqa: BLE001 - an untrusted source's failure is not final
            fallback = self._fallback
            if fallback is None or self.source_kind is not SourceKind.SIBLING \
                    or not self._recoverable(e):
                raise
            if self.held:
                # No client has seen a byte of it: start over.
                log.warning("fill of %s from %s failed after %d bytes (%s): starting over "
                            "from the upstream", self.digest, self.source_name, self.written, e)
                await self._start_over()
                await self._take(lambda: fallback(0))
                return
            at = self.resumed_at = self.written
            log.warning("fill of %s from %s failed after %d bytes (%s): going on from "
                        "the upstream", self.digest, self.source_name, at, e)
            if self.size is not None and at >= self.size:
                self._check_whole()                  # it had sent everything
            else:
                await self._take(lambda: fallback(at), received=at)

    def _recoverable(self, e: BaseException) -> bool:
        """May the upstream make up for this failure of an untrusted source? Its own
        failures, yes; wrong bytes and a full disk only while no reader has seen any
        (a local write error never: it is not the source's, and the file is suspect)."""
        if isinstance(e, SiblingError):
            return True
        return self.held and isinstance(e, (DigestMismatch, SizeMismatch, StoreFull, BlobTooLarge))

    def _check_whole(self) -> None:
        """Size and digest of everything copied in."""
        if self.size is None:
            self.size = self.written
        if self.written != self.size:
            raise SizeMismatch(self.size, self.written, self.source_name)
        self.writer.verify(self.size, self.source_name)

    async def _take(self, open_source: SourceFactory, received: int = 0) -> None:
        """Copy one source in (its bytes from `received` on) and check the whole."""
        async with open_source() as src:
            trusted = getattr(src, "trusted", True)
            self._set(FillState.STREAMING if trusted else FillState.HELD)
            self.announce(SourceKind.UPSTREAM if trusted else SourceKind.SIBLING)
            self.source_name = getattr(src, "name", None) or self._default_name
            release = None if trusted else asyncio.get_running_loop().call_later(
                HOLD_LIMIT, self._release)
            try:
                if src.size is not None:
                    if self.size is not None and src.size != self.size:
                        raise SizeMismatch(self.size, src.size, self.source_name)
                    if src.size > self.store.max_size:
                        raise BlobTooLarge(src.size, self.store.max_size, self.source_name)
                    self.size = src.size
                    self.store.reserve(self, src.size)
                if trusted:
                    self._headers_known.set()
                await self._copy_in(src, received)
                self._check_whole()
            except Exception as e:   # noqa: BLE001 - the source hears why, then it propagates
                if isinstance(e, (StoreFull, OSError)):
                    raise                         # ours, not the source's
                if not trusted:
                    getattr(src, "reject", lambda _e: None)(e)
                elif isinstance(e, (DigestMismatch, SizeMismatch)) and self._untrusted is not None:
                    # Resumed from the upstream: the part the sibling sent was wrong.
                    getattr(self._untrusted, "reject", lambda _e: None)(e)
                raise
            finally:
                if release is not None:
                    release.cancel()
                    self._untrusted = src

    def _release(self) -> None:
        """Held too long: let the readers stream what has come (the last byte is still
        held until the whole is verified)."""
        if self.held:
            log.info("fill of %s from %s: %d bytes in %.0f s, streaming before verification",
                     self.digest, self.source_name, self.written, HOLD_LIMIT)
            self._headers_known.set()
            self._set(FillState.STREAMING)

    async def _start_over(self) -> None:
        """Forget everything an untrusted source wrote (no reader has seen any of it)."""
        self._uncounted = None            # a late callback of the old source counts nothing
        self._untrusted = None
        await self.writer.restart()
        self.written = 0
        self.size = self._expected
        if self.relay is not None:
            self.relay = MemoryRelay(0)
        self._set(FillState.STARTING)

    async def _copy_in(self, src: Source, received: int = 0) -> None:
        """Copy the source into the writer, telling readers as bytes land.

        Double-buffered: the next chunk arrives while a thread writes and hashes this
        one. At most one write is in flight, so writes stay in order, and none is left
        running when this returns or raises (the descriptor is closed after it).
        Readers hear of each write as soon as it lands, not when the next chunk comes.
        When the disk fills up, the rest goes to memory instead (pull/relay.py).
        """
        pending: asyncio.Future[None] | None = None
        pending_chunk = b""
        try:
            while True:
                chunk = await src.read(READ_CHUNK)
                received += len(chunk)
                if self.size is not None and received > self.size:
                    raise SizeMismatch(self.size, received, self.source_name)
                if self.size is None and chunk:
                    # No length announced: what has come counts, up to the whole budget.
                    if received > self.store.max_size:
                        raise BlobTooLarge(received, self.store.max_size, self.source_name)
                    self.store.reserve(self, received)
                if pending is not None:
                    try:
                        # Shielded: a cancelled fill still waits (in finally) for this write.
                        await asyncio.shield(pending)
                        # Counted now if its callback has not run yet (a write that was done
                        # already is awaited without a turn of the loop).
                        self._landed(pending, len(pending_chunk))
                    except StoreFull:
                        # The chunk did not land (nor was it hashed): it starts the memory part.
                        self._to_memory_mode()
                        await self._to_memory(pending_chunk)
                    pending = None
                if not chunk:
                    return
                if self.relay is not None:
                    await self._to_memory(chunk)
                    continue
                pending = self.writer.write(chunk, received - len(chunk))
                pending_chunk = chunk
                pending.add_done_callback(lambda f, n=len(chunk): self._landed(f, n))
                self._uncounted = pending
        finally:
            if pending is not None:
                await asyncio.wait([pending])

    def _to_memory_mode(self) -> None:
        if self.relay is not None:
            return
        self.relay = MemoryRelay(self.written)
        self.store.note_disk_full(time.time())
        log.warning("disk full while filling %s: the rest is relayed from memory, not cached",
                    self.digest)

    async def _to_memory(self, chunk: bytes) -> None:
        if self.held:
            # Readers wait for the verified whole, which memory cannot hold: go to the
            # upstream, whose bytes can be relayed as they come.
            raise StoreFull("disk full: unverified sibling bytes are not relayed from memory")
        relay = self.relay
        assert relay is not None
        # Back-pressure: the source waits while the slowest reader is MEM_LIMIT behind.
        while relay.over_limit():
            if not self._positions:
                raise StoreFull("disk full under data_dir, and no client left to relay to")
            await self._next_change()
        await self.writer.hash_only(chunk)
        relay.append(chunk)
        self.written += len(chunk)
        self._notify()

    def _trim(self) -> None:
        """Drop the memory every attached reader has passed."""
        relay = self.relay
        if relay is None or not relay.held:
            return
        if relay.drop_before(min(self._positions.values(), default=relay.end)):
            self._notify()

    def _landed(self, write: asyncio.Future[None], n: int) -> None:
        """Count a finished write once (from its callback, or from the copy loop)."""
        if write is not self._uncounted:
            return
        self._uncounted = None
        if not write.cancelled() and write.exception() is None:
            self.written += n
            self._notify()

    def _notify(self) -> None:
        fut, self._changed = self._changed, asyncio.get_running_loop().create_future()
        if not fut.done():
            fut.set_result(None)

    def _next_change(self) -> "asyncio.Future[None]":
        """The next change, to wait for. Shielded: one waiter cancelled (its client
        gone) must not cancel the future every other waiter shares."""
        return asyncio.shield(self._changed)

    # -- who still wants it -------------------------------------------------------

    def _want(self) -> None:
        self.interest += 1
        self.idle_since = None

    def _unwant(self) -> None:
        self.interest -= 1
        if not self.interest:
            self.idle_since = asyncio.get_running_loop().time()
            if self.on_idle is not None and not self.done:
                self.on_idle(self)

    def abandon(self) -> None:
        """Nobody wants it: stop fetching (its temp file goes, its reservation too)."""
        if not self.done and self.task is not None:
            log.info("fill of %s from %s: nobody waits for it any more, cancelled after "
                     "%d of %s bytes", self.digest, self.source_name, self.written, self.size)
            self.abandoned = True
            self.task.cancel()

    # -- the readers -----------------------------------------------------------

    @contextmanager
    def _wanted(self) -> Iterator[None]:
        """Held by whoever reads or waits: the fill is not abandoned meanwhile."""
        self._want()
        try:
            yield
        finally:
            self._unwant()

    async def _until(self, ready: Callable[[], bool]) -> None:
        """Wait, wanting the fill, until ready(); raises the fill's error if it fails first."""
        with self._wanted():
            while not ready():
                if self.error is not None:
                    raise self.error
                await self._next_change()

    async def wait_headers(self) -> int | None:
        """The blob's size once known; raises the fill's error if it failed first."""
        with self._wanted():
            await self._headers_known.wait()
        if self.error is not None:
            raise self.error
        return self.size

    async def wait_verified(self) -> int:
        """The size, once the whole blob is verified (for answers that need it up front)."""
        await self._until(lambda: self.verified)
        assert self.size is not None
        return self.size

    async def wait_sendable(self) -> None:
        """Until bytes may go out: not held back (an untrusted source's), or verified;
        raises the fill's error if it fails first."""
        await self._until(lambda: not self.held or self.verified)
        if self.error is not None:
            raise self.error

    async def open_fd(self) -> int | None:
        """A read-only descriptor of the blob's bytes, the caller's to close.

        A duplicate of the temp file's while the fill runs (it survives the rename),
        or the stored blob's once the fill is done.
        """
        await self._headers_known.wait()
        fd = self.writer.reader()
        if fd is not None:
            return fd
        if self.relay is not None:
            return None          # disk full from the first byte: everything is in memory
        if self.stored:
            return await asyncio.to_thread(open_for_reading, self.store.path(self.digest))
        raise self.error or self.commit_error or SizeMismatch(self.size or 0, self.written, "fill")

    async def spans(self, start: int = 0, end: int | None = None
                    ) -> AsyncIterator[tuple[int, int] | bytes]:
        """What to send of [start, end), as it can be sent: (offset, count) windows of
        the file, or bytes of the part held in memory (disk full).

        The last byte of the range comes only after the whole blob is verified; a
        failed fill raises here, in every reader.
        """
        rid = next(_reader_ids)
        pos = start
        self._positions[rid] = pos
        self._want()
        try:
            while True:
                self._positions[rid] = pos
                self._trim()
                if self.error is not None:
                    raise self.error
                if self.held and not self.verified:
                    await self._next_change()
                    continue
                stop = end if end is not None else self.size
                if stop is not None and pos >= stop and self.verified:
                    return          # an empty range too: only once the blob is verified
                # While unverified, stay one byte short of the response's end.
                if self.verified:
                    limit = self.written if stop is None else min(stop, self.written)
                else:
                    limit = min(self.written, stop - 1) if stop is not None else self.written - 1
                if pos < limit:
                    relay = self.relay
                    if relay is not None and relay.holds(pos):
                        yield relay.read(pos, limit)
                    elif relay is not None and not self.writer.readable:
                        raise StoreFull("disk full: this part of the blob is gone")
                    else:
                        limit = min(limit, relay.base) if relay is not None else limit
                        yield pos, limit - pos
                    pos = limit
                    continue
                if self.verified:
                    return
                await self._next_change()
        finally:
            del self._positions[rid]
            self._unwant()
            self._trim()
