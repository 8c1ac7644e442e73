"""deploy/prometheus/alerts.yaml: valid for the real `promtool`, every alert unit-tested
(firing and not firing) in alerts_test.yaml, and every metric it reads one that a
running cache exports."""
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.conftest import require_binaries
from tests.support.edge import EdgeServer, make_config

RULES = Path(__file__).parent.parent / "deploy" / "prometheus"


def _promtool(*args):
    require_binaries("promtool")
    return subprocess.run([shutil.which("promtool"), *args], capture_output=True, text=True,
                          timeout=120, cwd=RULES)


def _alerts():
    doc = yaml.safe_load((RULES / "alerts.yaml").read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"]}


def test_rules_check_and_their_unit_tests_pass():
    r = _promtool("check", "rules", "alerts.yaml")
    assert r.returncode == 0, r.stdout + r.stderr
    r = _promtool("test", "rules", "alerts_test.yaml")
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_every_alert_is_tested_firing_and_quiet():
    tests = yaml.safe_load((RULES / "alerts_test.yaml").read_text())["tests"]
    firing, quiet = set(), set()
    for t in tests:
        for case in t["alert_rule_test"]:
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    assert set(_alerts()) == firing == quiet
    assert {"EdgecacheUpstreamDown", "EdgecacheServingStaleForLong", "EdgecacheHitRatioCollapsed",
            "EdgecacheDiskNearlyFull", "EdgecacheDiskFull", "EdgecachePinnedSyncFailing",
            "EdgecachePinnedSyncTooOld", "EdgecacheWrongBytes",
            "EdgecacheScrubFoundBadBlobs"} <= set(_alerts())


async def test_every_metric_the_alerts_read_is_exported(tmp_path):
    doc = make_config(tmp_path / "data", {"central.example": "http://127.0.0.1:9"},
                      siblings={"mdns": False})
    async with EdgeServer(doc) as edge, aiohttp.ClientSession() as s:
        async with s.get(f"{edge.url}/metrics") as r:
            text = await r.text()
    exported = {n.removesuffix("_total") for n in re.findall(r"^# TYPE (\S+) ", text, re.M)}
    for name, rule in _alerts().items():
        for metric in re.findall(r"\bedgecache_[a-z_]+", rule["expr"]):
            family = metric.removesuffix("_total")
            assert family in exported, (name, metric)
    if not exported:
        pytest.fail("no metrics")
