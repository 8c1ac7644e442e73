"""The status page in a real headless browser (Debian chromium + chromium-driver,
driven by selenium): it loads without console errors, refreshes itself, needs no
external asset, and every figure it shows that /metrics also has is the same."""
import os
import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from edgecache.server.status_page import render
from edgecache.units import human_size as size
from tests.conftest import IN_CI, require_binaries
from tests.support.edge import EdgeProcess, make_config
from tests.support.images import make_image, push

HOST = "central.example"
ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json"}


def _get(url, headers=None):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
        return r.status, r.read()


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _metric(samples: dict[str, float], selector: str) -> float:
    """A page's data-metric: `name` sums every label set, `name{k="v"}` those with k=v."""
    m = re.fullmatch(r'([a-z_]+)(?:\{(\w+)="([^"]*)"\})?', selector)
    assert m, selector
    name, key, want = m.groups()
    total, found = 0.0, False
    for sample, value in samples.items():
        base, _, labels = sample.partition("{")
        if base != name:
            continue
        if key is not None and f'{key}="{want}"' not in labels:
            continue
        total += value
        found = True
    return total if found else 0.0


def _browser():
    require_binaries("chromium", "chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        if IN_CI:
            pytest.fail("selenium missing")
        pytest.skip("selenium missing")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1800", "--no-proxy-server"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def test_the_page_renders_every_section_from_a_status_document():
    from edgecache.recent import Minute, RecentError
    doc = {"version": "1.2.3", "now": 1.8e9, "uptime_s": 12, "data_dir": "/var/lib/edgecache",
           "bytes_used": 3 * 1024**3, "budget_bytes": 20 * 1024**3, "pinned_bytes": 1024,
           "blob_count": 7, "store": {"evictions": 2, "quarantined": 1, "disk_full": True},
           "upstreams": {"corp": {"state": "down", "answering": False, "consecutive_failures": 3,
                                  "last_error": "<script>x</script>", "last_ok_at": None}},
           "sync": {"entries": [{"kind": "pinned", "ref": "corp/app:v1", "platforms": ["linux/amd64"],
                                 "state": "failed", "bytes_done": 1, "bytes_total": 2,
                                 "referrers": 2, "digest": None, "reason": "boom"}],
                    "totals": {"pinned": {"complete": 0, "desired": 1},
                               "prefetch": {"complete": 0, "desired": 0}},
                    "running": False, "problems": ["pinned.yaml:3: bad"]},
           "sync_last_success": {}, "siblings": None}
    with_siblings = {**doc, "siblings": {"live": 1, "peers": [
        {"url": "http://10.0.0.2:5000", "node_id": "edge-2", "state": "up", "bytes_fetched": 5 * 1024**2,
         "bytes_served": 0, "last_error": None}]}}
    page = render(with_siblings, {}, [], [], [])
    assert "edge-2" in page and "5.0 MiB" in page and "http://10.0.0.2:5000" in page
    page = render(doc, {"hits": 3.0, "misses": 1.0, "served:local": 2048.0},
                  [Minute(1, hits=3, misses=1, served={"local": 2048})],
                  [RecentError(1.8e9, "stale", "corp: app:v1")],
                  [(1.8e9, 403, "GET", "/v2/x", "10.0.0.9", "outside access.networks")])
    for text in ("75.0%", "3.0 GiB", "20.0 GiB", "disk full", "corp/app:v1", "boom",
                 "pinned.yaml:3: bad", "siblings are not enabled", "denied 403",
                 "outside access.networks", "corp: app:v1", 'http-equiv="refresh"'):
        assert text in page, text
    assert "<script>" not in page and "&lt;script&gt;" in page      # escaped, every value
    assert not re.search(r'(src|href)="https?://', page)            # no external assets
    assert size(1536) == "1.5 KiB"


@pytest.mark.integration
def test_the_status_page_in_a_real_browser_matches_metrics(tmp_path, registry):
    img = make_image(801, layers=2, layer_size=64 * 1024)
    push(registry.url, "pos/app", "v1", img)
    push(registry.url, "pos/other", "v1", make_image(802, layers=1, layer_size=1024))
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(f"images:\n  - {HOST}/pos/app:v1\n")
    doc = make_config(tmp_path / "data", {HOST: registry.url}, default=HOST, tag_ttl="1s",
                      pinned=str(pinned))
    driver = _browser()
    try:
        with EdgeProcess(tmp_path, doc) as edge:
            _get(f"{edge.url}/v2/pos/other/manifests/v1", ACCEPT)
            for layer in img.layers:
                for _ in range(2):
                    assert _get(f"{edge.url}/v2/pos/app/blobs/{layer.digest}")[0] == 200
            deadline = time.monotonic() + 20
            while b'"complete"' not in _get(f"{edge.url}/_edgecache/sync")[1]:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            registry.stop()
            time.sleep(1.1)
            assert _get(f"{edge.url}/v2/pos/other/manifests/v1", ACCEPT)[0] == 200     # stale
            driver.get(f"{edge.url}/_edgecache/")
            metrics = _samples(_get(f"{edge.url}/metrics")[1].decode())
            assert driver.title.startswith("edgecache")
            severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert severe == [], severe
            shown = driver.find_elements("css selector", "[data-metric]")
            assert len(shown) >= 8
            for el in shown:
                selector, value = el.get_attribute("data-metric"), float(el.get_attribute("data-value"))
                assert value == _metric(metrics, selector), (selector, value)
            text = driver.find_element("tag name", "body").text
            for part in ("Hit ratio, last hour", "Upstreams", HOST, "pos/app:v1", "complete",
                         "Last errors", "stale", "Siblings"):
                assert part in text, part
            assert driver.find_elements("css selector", "svg.chart")
            shot = Path(os.environ.get("EDGECACHE_SCREENSHOT", tmp_path / "status-page.png"))
            driver.save_screenshot(str(shot))
            assert shot.stat().st_size > 10_000
            # It refreshes itself: a second load with new traffic shows the new figure.
            before = float(driver.find_element("css selector", '[data-metric="edgecache_cache_hits_total"]')
                           .get_attribute("data-value"))
            _get(f"{edge.url}/v2/pos/app/blobs/{img.layers[0].digest}")
            deadline = time.monotonic() + 25
            while float(driver.find_element("css selector", '[data-metric="edgecache_cache_hits_total"]')
                        .get_attribute("data-value")) == before:
                assert time.monotonic() < deadline, "the page did not refresh"
                time.sleep(0.5)
    finally:
        driver.quit()
