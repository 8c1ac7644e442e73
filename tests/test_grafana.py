"""deploy/grafana/edgecache.json against a real Prometheus scraping a running cache:
every panel's every query, and the dashboard's variables, return data. The traffic
is real: pulls (misses and hits), a pinned sync, the upstream stopped (stale answers,
errors), a configured sibling that is down."""
import json
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import require_binaries
from tests.support.edge import EdgeProcess, make_config
from tests.support.images import make_image, push
from tests.support.ports import free_port
from tests.support.prometheus import Prometheus

pytestmark = pytest.mark.integration
DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana" / "edgecache.json"
HOST = "central.example"
ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json"}


def _get(url, headers=None):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
        return r.status, r.read()


def _panels():
    doc = json.loads(DASHBOARD.read_text())
    return doc, [p for p in doc["panels"] if p.get("targets")]


def test_the_dashboard_covers_what_an_operator_watches():
    _, panels = _panels()
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for metric in ("edgecache_cache_hits_total", "edgecache_served_bytes_total",
                   "edgecache_upstream_up", "edgecache_stale_serves_total", "edgecache_sync_entries",
                   "edgecache_sync_last_success_timestamp_seconds", "edgecache_sibling_up",
                   "edgecache_store_bytes", "process_resident_memory_bytes", "process_open_fds"):
        assert metric in exprs, metric


def test_every_panel_query_returns_data_from_a_real_prometheus(tmp_path, registry):
    require_binaries("prometheus")
    img = make_image(701, layers=1, layer_size=64 * 1024)
    push(registry.url, "pos/app", "v1", img)
    push(registry.url, "pos/other", "v1", make_image(702, layers=1, layer_size=1024))
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(f"images:\n  - {HOST}/pos/app:v1\n")
    doc = make_config(tmp_path / "data", {HOST: registry.url}, default=HOST, tag_ttl="1s",
                      pinned=str(pinned),
                      siblings={"mdns": False, "peers": [f"http://127.0.0.1:{free_port()}"]})
    with EdgeProcess(tmp_path, doc) as edge, Prometheus(tmp_path, [doc["listen"]]) as prom:
        assert _get(f"{edge.url}/v2/pos/other/manifests/v1", ACCEPT)[0] == 200
        for _ in range(3):
            assert _get(f"{edge.url}/v2/pos/app/blobs/{img.layers[0].digest}")[0] == 200
        assert prom.wait_for('edgecache_sync_last_success_timestamp_seconds{list="pinned"} > 0')
        registry.stop()
        for _ in range(3):                     # the upstream gone: stale answers, errors
            time.sleep(1.1)
            assert _get(f"{edge.url}/v2/pos/other/manifests/v1", ACCEPT)[0] == 200
        assert prom.wait_for("edgecache_stale_serves_total > 0")
        time.sleep(3)                          # a few more scrapes: rates over them
        dash, panels = _panels()
        jobs = prom.api("label/job/values", **{"match[]": "edgecache_build_info"})
        instances = prom.api("label/instance/values", **{"match[]": "edgecache_build_info"})
        assert jobs == ["edgecache"] and instances == [doc["listen"]]
        empty = []
        for p in panels:
            for t in p["targets"]:
                expr = (t["expr"].replace("$__rate_interval", "30s").replace("$instance", ".+")
                        .replace("$job", ".+"))
                if not prom.query(expr):
                    empty.append((p["title"], expr))
        assert empty == []
        # The alert rules load and evaluate in the same Prometheus (no rule errors).
        groups = prom.api("rules")["groups"]
        assert groups and all(r["health"] == "ok" for g in groups for r in g["rules"]), groups
        assert "UpstreamDown" in json.dumps(prom.api("rules"))
        del dash
