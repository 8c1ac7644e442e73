"""A hostile client in a process of its own: `python -m tests.support.flood URL USER
CONCURRENCY SECONDS` sends GETs with a new wrong Basic password each, CONCURRENCY at
a time, for SECONDS, then prints the answers it got as JSON ({status: count})."""
from __future__ import annotations

import asyncio
import base64
import collections
import json
import sys
import time

import aiohttp


async def main(url: str, user: str, concurrency: int, seconds: float) -> None:
    answers: collections.Counter[int] = collections.Counter()
    end = time.monotonic() + seconds

    async def one(s: aiohttp.ClientSession, i: int) -> None:
        n = 0
        while time.monotonic() < end:
            n += 1
            auth = base64.b64encode(f"{user}:wrong-{i}-{n}".encode()).decode()
            try:
                async with s.get(url, headers={"Authorization": f"Basic {auth}"}) as r:
                    await r.read()
                    answers[r.status] += 1
            except aiohttp.ClientError:
                answers[0] += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        print("started", flush=True)
        await asyncio.gather(*(one(s, i) for i in range(concurrency)))
    print(json.dumps(answers), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
