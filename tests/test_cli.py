"""The gc, verify and status commands, run as a user would."""
import asyncio
import json
import subprocess
import sys

import yaml

from edgecache.reference import digest_of
from edgecache.store.blobs import BlobStore


def run(*args):
    return subprocess.run([sys.executable, "-m", "edgecache", *args], capture_output=True, text=True,
                          timeout=60)


def fill_store(data_dir, blobs, max_size):
    async def go():
        s = BlobStore(data_dir, max_size, high_watermark=1.0, low_watermark=1.0)
        await s.open()
        ds = []
        for b in blobs:
            d = digest_of(b)
            await s.put_bytes(d, b)
            ds.append(d)
        await s.close()
        return ds
    return asyncio.run(go())


def config(tmp_path, max_size):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "cache": {"max_size": max_size},
                                 "upstreams": {"a.example": {"url": "http://127.0.0.1:9"}}}))
    return p


def test_gc_evicts_least_recently_used_down_to_the_budget(tmp_path):
    ds = fill_store(tmp_path / "data", [bytes([i]) * 1000 for i in range(10)], max_size=100_000)
    r = run("gc", "--config", str(config(tmp_path, 5000)), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    # low watermark 0.85 of 5000 = 4250: six oldest go, four newest stay.
    assert out["evicted"] == 6 and out["bytes_used"] == 4000
    for d in ds[:6]:
        assert not (tmp_path / "data" / "blobs" / "sha256" / d.hex[:2] / d.hex).exists()
    for d in ds[6:]:
        assert (tmp_path / "data" / "blobs" / "sha256" / d.hex[:2] / d.hex).exists()
    r = run("gc", "--config", str(config(tmp_path, 3000)))
    assert r.stdout == "evicted 2 blobs, freed 2.0 KiB; 2.0 KiB used of 2.9 KiB (2 blobs, 0 B pinned)\n"


def test_verify_reports_and_quarantines_corrupted_blobs(tmp_path):
    ds = fill_store(tmp_path / "data", [b"alpha" * 100, b"beta" * 100], max_size=100_000)
    bad = tmp_path / "data" / "blobs" / "sha256" / ds[1].hex[:2] / ds[1].hex
    bad.write_bytes(b"bexa" * 100)
    cfg = config(tmp_path, 100_000)
    r = run("verify", "--config", str(cfg), "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout) == {"checked": 2, "bytes": 900, "bad": [str(ds[1])]}
    assert not bad.exists() and list((tmp_path / "data" / "quarantine").iterdir())
    r = run("verify", "--config", str(cfg))
    assert r.returncode == 0 and r.stdout == "checked 1 blobs (500 B): all good\n"


def test_status_summarises_the_running_daemon(tmp_path):
    from tests.support.edge import EdgeProcess, make_config
    from tests.support.ports import free_port
    doc = make_config(tmp_path / "data", {"a.example": "http://127.0.0.1:9",
                                          "b.example": f"http://127.0.0.1:{free_port()}"},
                      default="a.example")
    edge = EdgeProcess(tmp_path, doc)
    r = run("status", "--config", str(edge.config_path))       # not started yet
    assert r.returncode == 1 and "no daemon answers" in r.stderr
    with edge:
        import urllib.request
        try:
            urllib.request.urlopen(f"{edge.url}/v2/x/manifests/v1?ns=b.example", timeout=10)
        except Exception:   # noqa: BLE001 - a 503: the upstream is not there
            pass
        r = run("status", "--config", str(edge.config_path))
        assert r.returncode == 2, r.stderr          # an upstream not answering
        lines = r.stdout.splitlines()
        assert lines[0].startswith("edgecache ") and "up " in lines[0]
        assert lines[1].startswith("store      0 B of 20.0 GiB (0%), 0 blobs")
        assert any(x.split()[-1:] == ["up"] or " a.example " in x for x in lines)
        assert any("b.example" in x and "failing" in x for x in lines), r.stdout
        assert any(x.startswith("sync       pinned 0/0 complete") for x in lines)
        r = run("status", "--config", str(edge.config_path), "--json")
        assert json.loads(r.stdout)["upstreams"]["b.example"]["answering"] is False
