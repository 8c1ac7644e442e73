"""bcrypt checks that no flood of wrong passwords can turn against the pulls.

bcrypt is slow on purpose (about 0.3 s at cost 12), so the checks run on threads of
their own, at most `concurrency` at once, shared fairly among client addresses (one
queue each, served in turn): a client sending wrong passwords waits behind itself
only, and is told 429 past a few outstanding checks. A header that just failed is
refused for a while without hashing again; these refusals, and the 429s, come after
a second's pause (a flood then costs the event loop one answer per connection per
second, not thousands). Concurrent checks of one header share one hash. An unknown
user is checked against a dummy hash of the same cost, so a wrong name takes as long
as a wrong password (names cannot be enumerated by timing).
"""
from __future__ import annotations

import asyncio
import ipaddress
import re
import secrets
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor

import bcrypt

from edgecache.addresses import parse_address
from edgecache.errors import TooManyRequests

PER_CLIENT = 8            # checks one client address may have queued or running
MAX_CLIENTS = 1024        # client queues at once; past that, new ones share one
OVERFLOW = "(overflow)"
FAILED_TTL = 30.0         # a failed header is refused this long without hashing
FAILED_MAX = 4096
BCRYPT_MAX = 72           # bcrypt reads this many bytes of a password (htpasswd -B too)
TARPIT = 1.0              # seconds before a refusal that cost no hash is answered

_Job = tuple[asyncio.Future, bytes, bytes]


def _cost(hashed: bytes) -> int:
    m = re.match(rb"\$2[aby]\$(\d\d)\$", hashed)
    return int(m[1]) if m else 10


def dummy_hash(users: dict[str, bytes]) -> bytes:
    """A hash of a random password at the highest cost in use (blocking: ~one check)."""
    cost = max((_cost(h) for h in users.values()), default=10)
    return bcrypt.hashpw(secrets.token_bytes(16).hex().encode(), bcrypt.gensalt(rounds=cost))


def client_key(address: str) -> str:
    """Whose queue a check waits in: the address, an IPv6 client's /64 (one host
    has a whole /64 to pick addresses from)."""
    addr = parse_address(address)
    if addr is None:
        return address
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password[:BCRYPT_MAX], hashed)
    except ValueError:              # a malformed hash line
        return False


class PasswordChecker:
    """Owns the bcrypt threads; `close()` ends them."""

    def __init__(self, concurrency: int, *, clock=time.monotonic) -> None:
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="edgecache-bcrypt")
        self._free = concurrency
        self._clock = clock
        self._queues: OrderedDict[str, deque[_Job]] = OrderedDict()
        self._running: dict[str, int] = {}
        self._failed: OrderedDict[bytes, float] = OrderedDict()
        self._checking: dict[bytes, asyncio.Future[bool]] = {}     # header -> its check
        self._generation = 0        # bumped by forget_failures: older checks remember nothing
        self.refused = 0            # checks answered 429 (a client over its share)
        self.hashed = 0             # checks that ran bcrypt

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def forget_failures(self) -> None:
        """The credentials changed (a reload): no failure, and no check under way, of
        the old ones counts any more."""
        self._failed.clear()
        self._checking.clear()
        self._generation += 1

    def recently_failed(self, key: bytes) -> bool:
        until = self._failed.get(key)
        if until is None:
            return False
        if until > self._clock():
            return True
        del self._failed[key]
        return False

    async def check(self, client: str, key: bytes, password: bytes, hashed: bytes) -> bool:
        """Whether password matches hashed; `key` names the header (for the failure
        cache), `client` the address whose queue it waits in."""
        if self.recently_failed(key):
            await asyncio.sleep(TARPIT)
            return False
        same = self._checking.get(key)
        if same is not None:
            return await asyncio.shield(same)          # one hash for every copy of a header
        client = client_key(client)
        if client not in self._queues and client not in self._running and \
                len(self._queues) >= MAX_CLIENTS:
            client = OVERFLOW                          # very many clients: they share one
        queue = self._queues.get(client)
        if len(queue or ()) + self._running.get(client, 0) >= PER_CLIENT:
            self.refused += 1
            await asyncio.sleep(TARPIT)
            raise TooManyRequests(f"too many credential checks from {client}")
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if queue is None:
            queue = self._queues[client] = deque()
        queue.append((fut, password, hashed))
        self._checking[key] = fut
        generation = self._generation
        fut.add_done_callback(lambda f: self._settled(key, f, generation))
        self._dispatch()
        return await asyncio.shield(fut)

    def _settled(self, key: bytes, fut: asyncio.Future[bool], generation: int) -> None:
        """A check's end: remembered when it failed, whoever still waits for it."""
        if self._checking.get(key) is fut:
            del self._checking[key]
        if fut.cancelled() or fut.exception() is not None or fut.result() \
                or generation != self._generation:
            return
        self._failed[key] = self._clock() + FAILED_TTL
        self._failed.move_to_end(key)
        while len(self._failed) > FAILED_MAX:
            self._failed.popitem(last=False)

    def _dispatch(self) -> None:
        """Start the next checks, one client address after another."""
        loop = asyncio.get_running_loop()
        while self._free and self._queues:
            client, queue = next(iter(self._queues.items()))
            fut, password, hashed = queue.popleft()
            if queue:
                self._queues.move_to_end(client)
            else:
                del self._queues[client]
            if fut.done():                     # cancelled (at shutdown)
                continue
            self._free -= 1
            self._running[client] = self._running.get(client, 0) + 1
            self.hashed += 1
            work = loop.run_in_executor(self._pool, _checkpw, password, hashed)
            work.add_done_callback(lambda w, f=fut, c=client: self._done(w, f, c))

    def _done(self, work: asyncio.Future, fut: asyncio.Future, client: str) -> None:
        self._free += 1
        n = self._running[client] - 1
        if n:
            self._running[client] = n
        else:
            del self._running[client]
        if not fut.done():
            if work.cancelled():
                fut.cancel()
            elif work.exception() is not None:
                fut.set_exception(work.exception())
            else:
                fut.set_result(work.result())
        self._dispatch()
