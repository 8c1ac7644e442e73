"""The upstream client from a byte offset (where a fill goes on after a sibling
failed it): a registry that honours Range (Distribution) and one that does not."""
from __future__ import annotations

from edgecache.config import BreakerConfig, Timeouts, UpstreamConfig
from edgecache.upstream.client import UpstreamClient
from tests.support.faulty import FaultyUpstream
from tests.support.images import make_image, push

MiB = 1024 * 1024


async def read_all(client, repo, digest, offset):
    out = b""
    async with client.blob(repo, digest, offset) as src:
        size = src.size
        while chunk := await src.read(64 * 1024):
            out += chunk
    return size, out


async def check(url, img):
    client = UpstreamClient(UpstreamConfig("r.example", url), Timeouts(2, 5), BreakerConfig())
    await client.start()
    try:
        layer = img.layers[0]
        for offset in (0, 1, 12345, layer.size - 1):
            size, out = await read_all(client, "demo/app", layer.digest, offset)
            assert size == layer.size                  # the whole blob's size either way
            assert out == layer.data[offset:]
    finally:
        await client.close()


async def test_from_an_offset_with_range_support(registry):
    img = make_image(61, layers=1, layer_size=1 * MiB)
    push(registry.url, "demo/app", "v1", img)
    await check(registry.url, img)
    statuses = [st for m, t, st in registry.requests() if m == "GET" and img.layers[0].digest in t]
    assert statuses == [200, 206, 206, 206]           # it did answer with parts


async def test_from_an_offset_without_range_support():
    img = make_image(62, layers=1, layer_size=1 * MiB)
    async with FaultyUpstream({"demo/app:v1": img}) as up:     # answers 200 with everything
        await check(up.url, img)
