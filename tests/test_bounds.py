"""Bounds: no client or upstream can make the cache grow past its budget, hold
memory, or stall it. Hostile clients and a hostile upstream of the tests' own,
each bound asserted with a number."""
import asyncio
import os
from pathlib import Path

import aiohttp

from edgecache.reference import parse_digest
from edgecache.store import layout
from tests.support.edge import EdgeServer, make_config
from tests.support.faulty import FaultyUpstream
from tests.support.images import make_image

MiB = 1 << 20


def _disk_bytes(d: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(d):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass
    return total


async def test_fills_of_clients_that_hang_up_are_cancelled_and_the_disk_stays_in_budget(tmp_path):
    n, budget = 16, 24 * MiB
    img = make_image(401, layers=n + 3, layer_size=8 * MiB)
    layers = img.layers
    blob = max(len(l.data) for l in layers)              # a little over 8 MiB (gzip framing)
    async with FaultyUpstream({"demo/app:v1": img}) as up:
        doc = make_config(tmp_path / "data", {"central.example": up.url}, default="central.example",
                          cache={"max_size": budget, "abandon_after": "1s", "evict_interval": "0.2s"})
        async with EdgeServer(doc) as edge, aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0)) as s:
            store, fills = edge.services.store, edge.services.blobs.fills
            for layer in layers[-2:]:                    # 16 MiB already cached
                async with s.get(f"{edge.url}/v2/demo/app/blobs/{layer.digest}") as r:
                    assert r.status == 200 and await r.read() == layer.data
            assert await edge.stored(layers[-1].digest)
            up.fault("slow", rate=1 * MiB)               # a slow WAN: 8 s a blob
            up.reset_counts()

            samples: list[tuple[int, int, int]] = []     # stored on disk, in temp files, reserved
            stop = asyncio.Event()

            async def sample() -> None:
                while not stop.is_set():
                    stored = await asyncio.to_thread(_disk_bytes, layout.blobs_dir(store.data_dir))
                    tmp = await asyncio.to_thread(_disk_bytes, layout.tmp_dir(store.data_dir))
                    samples.append((stored, tmp, store.reserved_bytes))
                    await asyncio.sleep(0.05)

            async def hang_up(digest: str, after: int) -> None:
                async with s.get(f"{edge.url}/v2/demo/app/blobs/{digest}") as r:
                    assert r.status == 200
                    await r.content.readexactly(after)
                    r.close()                            # gone mid-body

            sampler = asyncio.create_task(sample())
            # 16 clients take 256 KiB each and leave; one takes 5 MiB of 8 (past half) and leaves.
            await asyncio.gather(*(hang_up(l.digest, 256 * 1024) for l in layers[:n]),
                                 hang_up(layers[n].digest, 5 * MiB))
            left = asyncio.get_running_loop().time()
            for _ in range(200):
                if not fills.active():
                    break
                await asyncio.sleep(0.05)
            settled = asyncio.get_running_loop().time() - left
            for _ in range(40):                          # idle: the evictor alone
                if store.budgeted_bytes() <= store.low:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await sampler

            assert not fills.active(), "fills went on after every client had left"
            assert fills.abandoned == n and settled < 6.0
            assert await edge.stored(layers[n].digest)   # past finish_fraction: finished
            assert not any(store.has(parse_digest(l.digest)) for l in layers[:n])
            full = (n + 1) * blob
            assert up.sent_bytes < 0.45 * full, (up.sent_bytes, full)
            assert store.budgeted_bytes() <= store.low and store.reserved_bytes == 0
            worst = max(st for st, _, _ in samples)
            # The disk never holds more blobs than the budget plus one blob, and the temp
            # files are the fills' bytes, all gone once they are.
            assert worst <= budget + blob, (worst, budget)
            assert samples[-1][1] == 0
            edge.last_figures = {"worst_stored": worst, "sent": up.sent_bytes, "full": full,
                                 "settled_s": settled}
            print(f"\nhang-ups: stored at most {worst / MiB:.1f} MiB (budget {budget / MiB:.0f}), "
                  f"upstream sent {up.sent_bytes / MiB:.1f} of {full / MiB:.0f} MiB, fills gone "
                  f"{settled:.1f} s after the clients")
