"""Bounded load: 1000 concurrent connections against a real server process
(uvloop), each pulling a cached manifest and blob; then the server still serves,
with no descriptor leaked."""
import asyncio
import os
import resource

from tests.support.edge import EdgeProcess, make_config
from tests.support.faulty import FaultyUpstream
from tests.support.images import make_image

N = 1000


async def one(host, port, paths):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        statuses = []
        for path in paths:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n".encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")][0]
                         .split(b":")[1])
            await reader.readexactly(length)
            statuses.append(status)
        return statuses
    finally:
        writer.close()


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_a_thousand_concurrent_connections(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * N)), hard))
    img = make_image(91, layer_size=64 * 1024)
    async with FaultyUpstream({"demo/app:v1": img}) as up:
        doc = make_config(tmp_path / "data", {"central.example": up.url}, default="central.example")
        edge = EdgeProcess(tmp_path, doc)
        await asyncio.to_thread(edge.start)
        try:
            host, port = edge.url.removeprefix("http://").split(":")
            paths = ["/v2/demo/app/manifests/v1", f"/v2/demo/app/blobs/{img.layers[0].digest}"]
            assert await one(host, int(port), paths) == [200, 200]          # warm the cache
            before = fds(edge.proc.pid)
            results = await asyncio.wait_for(
                asyncio.gather(*(one(host, int(port), paths) for _ in range(N))), timeout=120)
            assert all(r == [200, 200] for r in results)
            assert up.count("GET", rf"/v2/demo/app/blobs/{img.layers[0].digest}") == 1
            await asyncio.sleep(0.5)
            assert fds(edge.proc.pid) <= before + 5                         # every socket let go
            assert await one(host, int(port), paths) == [200, 200]
        finally:
            await asyncio.to_thread(edge.stop)
