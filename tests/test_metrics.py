"""/metrics as an operator alerts on it: hits and misses per upstream, an upstream
down after one failed request (not only once its breaker opens), the last
successful sync, process metrics and build info; checked by the real `promtool`."""
import shutil
import subprocess

import aiohttp
import pytest

from edgecache import __version__
from tests.conftest import IN_CI
from tests.support.edge import EdgeServer, make_config
from tests.support.faulty import FaultyUpstream
from tests.support.images import make_image
from tests.support.ports import free_port

HOST = "central.example"


def _value(text: str, prefix: str) -> float:
    """The value of the one sample line that starts with prefix."""
    (line,) = [x for x in text.splitlines() if x.startswith(prefix)]
    return float(line.rsplit(" ", 1)[1])


async def _metrics(s, edge) -> str:
    async with s.get(f"{edge.url}/metrics") as r:
        assert r.status == 200
        return await r.text()


async def test_what_an_operator_alerts_on(tmp_path):
    img = make_image(601, layers=1, layer_size=4096)
    dead = f"http://127.0.0.1:{free_port()}"            # nothing listens: connection refused
    async with FaultyUpstream({"pos/app:v1": img}) as up:
        pinned = tmp_path / "pinned.yaml"
        pinned.write_text(f"images:\n  - {HOST}/pos/app:v1\n")
        doc = make_config(tmp_path / "data", {HOST: up.url, "down.example": dead}, default=HOST,
                          pinned=str(pinned), sync={"interval": "2h"})
        async with EdgeServer(doc) as edge, aiohttp.ClientSession() as s:
            await edge.services.syncer.sync()
            blob = img.layers[0].digest
            for _ in range(2):
                async with s.get(f"{edge.url}/v2/pos/app/blobs/{blob}") as r:
                    assert r.status == 200
                    await r.read()
            async with s.get(f"{edge.url}/v2/x/blobs/sha256:{'5' * 64}",
                             params={"ns": "down.example"}) as r:
                assert r.status == 503
            m = await _metrics(s, edge)
            # One failed request: down, though its breaker (3 failures) is still closed.
            assert _value(m, 'edgecache_upstream_up{upstream="down.example"}') == 0
            assert _value(m, 'edgecache_upstream_breaker_state{state="closed",upstream="down.example"}') == 1
            assert _value(m, f'edgecache_upstream_up{{upstream="{HOST}"}}') == 1
            # Not down for ever: idle, an unanswered request is forgotten after a while.
            import edgecache.upstream.client as client_module
            remembered = client_module.UNANSWERED_FOR
            client_module.UNANSWERED_FOR = 0.2
            try:
                import asyncio
                await asyncio.sleep(0.3)
                assert _value(await _metrics(s, edge), 'edgecache_upstream_up{upstream="down.example"}') == 1
            finally:
                client_module.UNANSWERED_FOR = remembered
            assert _value(m, f'edgecache_cache_hits_total{{kind="blob",upstream="{HOST}"}}') >= 1
            assert _value(m, 'edgecache_cache_misses_total{kind="blob",upstream="down.example"}') == 1
            # Each counter series says when it began, as prometheus_client's own do.
            import time
            for series in (f'edgecache_cache_hits_created{{kind="blob",upstream="{HOST}"}}',
                           'edgecache_cache_misses_created{kind="blob",upstream="down.example"}',
                           'edgecache_served_bytes_created{source="local"}',
                           'edgecache_coalesced_waiters_created'):
                assert time.time() - 120 < _value(m, series) <= time.time(), series
            synced = _value(m, 'edgecache_sync_last_success_timestamp_seconds{list="pinned"}')
            assert synced == edge.services.syncer.state.last_success["pinned"] > 0
            assert _value(m, "edgecache_sync_interval_seconds") == 7200
            # Blobs went out by sendfile here (plain HTTP): the copying path's series are there, at 0.
            assert _value(m, "edgecache_sendfile_bytes_total") > 0
            assert _value(m, "edgecache_copied_bytes_total") == 0
            assert _value(m, "edgecache_copy_thread_reads_total") == 0
            assert _value(m, "process_resident_memory_bytes") > 10 * 1024 * 1024
            assert _value(m, "process_open_fds") > 0
            assert _value(m, 'edgecache_build_info{python="') == 1
            assert f'version="{__version__}"' in m
            promtool = shutil.which("promtool")
            if promtool is None:
                if IN_CI:
                    pytest.fail("promtool missing (apt-get install prometheus)")
                pytest.skip("promtool missing")
            r = subprocess.run([promtool, "check", "metrics"], input=m, capture_output=True,
                               text=True, timeout=30)
            assert r.returncode == 0, r.stdout + r.stderr


def test_created_series_follow_prometheus_clients_switch():
    """PROMETHEUS_DISABLE_CREATED_SERIES drops every *_created sample, ours as its own."""
    import os
    import sys
    code = ("from edgecache.metrics import Metrics\n"
            "m = Metrics(); m.hit('blob', 'x'); m.miss('blob', 'x'); m.served('local', 5)\n"
            "m.policy('r', 'verified')\n"
            "lines = [x for x in m.render().decode().splitlines() if '_created' in x and x[0] != '#']\n"
            "print(' '.join(sorted({x.split('{')[0] for x in lines})))")
    ours = {"edgecache_cache_hits_created", "edgecache_cache_misses_created",
            "edgecache_served_bytes_created", "edgecache_policy_decisions_created"}
    for env, want in (({}, True), ({"PROMETHEUS_DISABLE_CREATED_SERIES": "True"}, False)):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, **env}, timeout=60).stdout
        assert (ours <= set(out.split())) is want and (bool(out.split()) is want), (env, out)
