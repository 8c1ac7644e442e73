"""SIGHUP's reload: the live parts of the config change in place, the rest is
reported as needing a restart, and a bad file keeps the running configuration."""
import asyncio

import yaml

from edgecache.config import load
from edgecache.server.reload import reload
from tests.support.edge import EdgeServer, make_config


async def test_reload_applies_the_live_parts_and_names_the_rest(tmp_path):
    doc = make_config(tmp_path / "data", {"a.example": "http://127.0.0.1:9"}, default="a.example",
                      tag_ttl="60s", cache={"max_size": "1GiB"})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    edge = EdgeServer(config=load(path))
    await edge.start()
    try:
        svc = edge.services
        doc.update(tag_ttl="5s", listen="127.0.0.1:1",
                   cache={"max_size": "100MiB", "abandon_after": "3s", "finish_fraction": 0.9,
                          "evict_interval": "7s", "scrub_interval": "1h"})
        path.write_text(yaml.safe_dump(doc))
        # Awaited right here, in the test's own task: this once hung the shutdown below
        # (asyncio.wait_for on 3.11 swallowed the syncer watcher's cancellation).
        restart = await reload(svc)
        got = (svc.manifests.tag_ttl, svc.store.max_size, svc.store.high, restart)
        fills = svc.blobs.fills
        assert (fills.abandon_after, fills.finish_fraction, svc.store.evict_interval) == (3, 0.9, 7)
        # A file that no longer validates changes nothing.
        path.write_text("cache: {max_size: lots}\n")
        again = await reload(svc)
        after = (svc.store.max_size, svc.config.tag_ttl)
    finally:
        await asyncio.wait_for(edge.stop(), 15)
    # The scrub keeps the settings it started with: it says so.
    assert got == (5, 100 * 1024**2, int(100 * 1024**2 * 0.95),
                   ["listen_port", "cache.scrub_interval"])
    assert again == [] and after == (100 * 1024**2, 5)


async def test_an_upstream_added_by_a_reload_waits_for_the_restart_it_needs(tmp_path):
    """Routing follows the upstream clients the process runs with: a request for an
    upstream only the new file names is an unknown registry (404), not a crash (500)."""
    import aiohttp
    doc = make_config(tmp_path / "data", {"a.example": "http://127.0.0.1:9"}, default="a.example")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    edge = EdgeServer(config=load(path))
    await edge.start()
    try:
        doc["upstreams"]["b.example"] = {"url": "http://127.0.0.1:9"}
        doc["default_upstream"] = "b.example"
        path.write_text(yaml.safe_dump(doc))
        restart = await reload(edge.services)
        async with aiohttp.ClientSession() as s:
            st, _, body = await edge.get(s, "/v2/x/manifests/v1?ns=b.example")
            st_default, _, _ = await edge.get(s, "/v2/x/manifests/v1")
    finally:
        await asyncio.wait_for(edge.stop(), 15)
    assert sorted(restart) == ["default_upstream", "upstreams"]
    assert st == 404 and b"NAME_UNKNOWN" in body
    assert st_default == 503          # still routed to a.example (unreachable), not to b
