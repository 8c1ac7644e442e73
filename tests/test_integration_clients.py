"""edgecache as a real process (uvloop) in front of the real CNCF Distribution
registry, pulled through by real clients: skopeo and containerd's ctr with a
hosts dir, the mechanism K3s uses."""
import json
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import require_binaries, require_containerd
from tests.support.containerd import Containerd, write_hosts_toml
from tests.support.edge import EdgeProcess, make_config
from tests.support.faulty import FaultyUpstream
from tests.support.images import make_image, make_index, push

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


@pytest.fixture
def edge(tmp_path, registry):
    doc = make_config(tmp_path / "data", {"central.example": registry.url},
                      default="central.example", tag_ttl="1s")
    e = EdgeProcess(tmp_path, doc).start()
    yield e
    e.stop()


def skopeo(*args, timeout=120):
    r = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r.stdout


def raw_digest(ref):
    import hashlib
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", ref],
                         capture_output=True, timeout=60, check=True).stdout
    return "sha256:" + hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize("route", ["default", "prefix"])
def test_skopeo_copies_a_multi_arch_image_through_the_cache(tmp_path, registry, edge, route):
    require_binaries("skopeo")
    idx = make_index(21, layers=2, layer_size=1 * MiB)
    pushed = push(registry.url, "demo/app", "v1", idx)
    host = edge.url.removeprefix("http://")
    repo = "demo/app" if route == "default" else "central.example/demo/app"
    skopeo("copy", "--all", "--src-tls-verify=false", f"docker://{host}/{repo}:v1",
           f"oci:{tmp_path / 'out'}:v1")
    assert raw_digest(f"docker://{host}/{repo}:v1") == pushed == raw_digest(f"docker://{registry.host}/demo/app:v1")
    layout = json.loads((tmp_path / "out" / "index.json").read_text())
    assert layout["manifests"][0]["digest"] == pushed
    for b in idx.blobs:        # every blob arrived, byte for byte
        assert (tmp_path / "out" / "blobs" / "sha256" / b.digest.split(":")[1]).read_bytes() == b.data
    # A second copy is served from the cache: no more blob GETs upstream.
    before = registry.count("GET", r"/v2/demo/app/blobs/.*")
    skopeo("copy", "--all", "--src-tls-verify=false", f"docker://{host}/{repo}:v1",
           f"oci:{tmp_path / 'out2'}:v1")
    assert registry.count("GET", r"/v2/demo/app/blobs/.*") == before == len(idx.blobs)


def test_ctr_pulls_through_hosts_toml_with_ns_and_an_unreachable_server(tmp_path, registry, edge):
    require_containerd()
    idx = make_index(22, layers=3, layer_size=1 * MiB)
    pushed = push(registry.url, "demo/app", "v1", idx)
    hosts = tmp_path / "certs.d"
    write_hosts_toml(hosts, "central.example", edge.url)        # server = a dead port
    with Containerd(tmp_path / "ctrd") as ctrd:
        r = ctrd.pull("central.example/demo/app:v1", hosts)
        assert r.returncode == 0, r.stderr + ctrd.log_tail()
        assert ctrd.image_digest("central.example/demo/app:v1") == pushed
    paths = [line["path"] for line in edge.access_log()]
    assert any(p.startswith("/v2/demo/app/manifests/v1?ns=central.example") for p in paths)
    # Only the amd64 image's blobs were fetched, each exactly once.
    amd64 = idx.images[0]
    for b in amd64.blobs:
        assert registry.count("GET", rf"/v2/demo/app/blobs/{b.digest}") == 1
    for b in idx.images[1].layers:
        assert registry.count("GET", rf"/v2/demo/app/blobs/{b.digest}") == 0


def test_twenty_concurrent_cold_requests_make_one_upstream_get(registry, edge):
    img = make_image(23, layers=1, layer_size=32 * MiB)
    push(registry.url, "demo/big", "v1", img)
    layer = img.layers[0]
    url = f"{edge.url}/v2/demo/big/blobs/{layer.digest}"
    barrier = threading.Barrier(20)

    def pull(_):
        barrier.wait()
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.read() == layer.data

    with ThreadPoolExecutor(20) as pool:
        assert all(pool.map(pull, range(20)))
    assert registry.count("GET", rf"/v2/demo/big/blobs/{layer.digest}") == 1


def test_offline_cached_tags_and_digests_still_pull(tmp_path, registry, edge):
    require_binaries("skopeo")
    idx = make_index(24, layers=2, layer_size=512 * 1024)
    pushed = push(registry.url, "demo/app", "v2", idx)
    host = edge.url.removeprefix("http://")
    skopeo("copy", "--all", "--src-tls-verify=false", f"docker://{host}/demo/app:v2", f"oci:{tmp_path / 'a'}:v2")
    registry.stop()
    time.sleep(1.2)      # past tag_ttl: the tag is answered stale-if-error
    # The tag and the digest both still pull.
    skopeo("copy", "--all", "--src-tls-verify=false", f"docker://{host}/demo/app:v2", f"oci:{tmp_path / 'b'}:v2")
    skopeo("copy", "--all", "--src-tls-verify=false", f"docker://{host}/demo/app@{pushed}",
           f"oci:{tmp_path / 'c'}:v2")
    assert json.loads((tmp_path / "b" / "index.json").read_text())["manifests"][0]["digest"] == pushed
    assert any(line.get("stale") for line in edge.access_log())
    # And after a restart of edgecache itself, still offline.
    edge.stop()
    edge.start()
    skopeo("copy", "--all", "--src-tls-verify=false", f"docker://{host}/demo/app:v2", f"oci:{tmp_path / 'd'}:v2")
    if not _root_with_containerd():
        return
    hosts = tmp_path / "certs.d"
    write_hosts_toml(hosts, "central.example", edge.url)
    with Containerd(tmp_path / "ctrd") as ctrd:
        r = ctrd.pull("central.example/demo/app:v2", hosts)
        assert r.returncode == 0, r.stderr
        assert ctrd.image_digest("central.example/demo/app:v2") == pushed


def _root_with_containerd():
    from tests.support import containerd
    return containerd.available()


def test_kill_9_mid_fill_leaves_no_partial_blob(tmp_path):
    img = make_image(25, layers=1, layer_size=8 * MiB)
    layer = img.layers[0]
    with FaultyUpstream.in_thread({"demo/huge:v1": img}) as up:
        up.fault("stall", digest=layer.digest, seconds=30, times=1)   # half the body, then nothing
        doc = make_config(tmp_path / "data", {"central.example": up.url}, default="central.example")
        e = EdgeProcess(tmp_path, doc).start()
        try:
            r = urllib.request.urlopen(f"{e.url}/v2/demo/huge/blobs/{layer.digest}", timeout=30)
            r.read(1 * MiB)
            tmp_dir = tmp_path / "data" / "tmp"
            assert any(tmp_dir.iterdir())
            e.kill9()
            r.close()
            e.start()
            assert list(tmp_dir.iterdir()) == []
            st = json.loads(urllib.request.urlopen(f"{e.url}/_edgecache/status").read())
            assert st["blob_count"] == 0
            with urllib.request.urlopen(f"{e.url}/v2/demo/huge/blobs/{layer.digest}", timeout=60) as r:
                assert r.read() == layer.data
            assert up.count("GET", rf"/v2/demo/huge/blobs/{layer.digest}") == 2
        finally:
            e.stop()


def test_gc_and_verify_go_through_a_running_daemon_and_nothing_else_touches_its_store(tmp_path, registry, edge):
    import subprocess
    import sys
    img = make_image(26, layers=1, layer_size=256 * 1024)
    push(registry.url, "demo/gc", "v1", img)
    with urllib.request.urlopen(f"{edge.url}/v2/demo/gc/blobs/{img.layers[0].digest}") as r:
        assert r.read() == img.layers[0].data
    for cmd in ("verify", "gc"):
        r = subprocess.run([sys.executable, "-m", "edgecache", cmd, "--json", "--config",
                            str(edge.config_path)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)
    # Another configuration on the same data_dir (no daemon at its address) is refused.
    other = tmp_path / "other.yaml"
    other.write_text(edge.config_path.read_text().replace(edge.doc["listen"], "127.0.0.1:9"))
    r = subprocess.run([sys.executable, "-m", "edgecache", "gc", "--config", str(other)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "in use by another edgecache process" in r.stderr
    with urllib.request.urlopen(f"{edge.url}/v2/demo/gc/blobs/{img.layers[0].digest}") as r:
        assert r.read() == img.layers[0].data
