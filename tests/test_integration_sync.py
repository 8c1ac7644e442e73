"""Pinned sets with the real Distribution registry, the real daemon and containerd:
sync, cut the upstream, pull every pinned image with ctr; edit a list while the
daemon runs; `edgecache sync` through the daemon and on its own."""
import json
import subprocess
import sys
import urllib.request

import pytest

from tests.conftest import require_containerd
from tests.support.containerd import Containerd, write_hosts_toml
from tests.support.edge import EdgeProcess, make_config
from tests.support.eventually import wait_until
from tests.support.images import make_image, make_index, push

pytestmark = pytest.mark.integration
HOST = "central.example"


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "edgecache", *args], capture_output=True,
                          text=True, timeout=timeout)


def status(edge):
    with urllib.request.urlopen(edge.url + "/_edgecache/status", timeout=5) as r:
        return json.loads(r.read())


def test_pinned_images_pull_with_ctr_after_the_upstream_is_gone(tmp_path, registry):
    require_containerd()
    idx = make_index(51, arches=("amd64", "arm64"), layers=2, layer_size=512 * 1024)
    tool = make_image(52, layers=2, layer_size=512 * 1024)
    push(registry.url, "pos/app", "v1", idx)
    tool_digest = push(registry.url, "pos/tool", "v3", tool)
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(f"images:\n  - ref: {HOST}/pos/app:v1\n    platforms: [linux/amd64]\n"
                      f"  - {HOST}/pos/tool@{tool_digest}\n")
    doc = make_config(tmp_path / "data", {HOST: registry.url}, default=HOST, pinned=str(pinned))
    edge = EdgeProcess(tmp_path, doc)
    # No daemon yet: `edgecache sync` runs in-process.
    r = cli("sync", "--config", str(edge.config_path))
    assert r.returncode == 0, r.stderr
    assert "pinned: 2/2 complete, 0 failed" in r.stdout
    registry.stop()
    with edge:
        hosts = tmp_path / "certs.d"
        write_hosts_toml(hosts, HOST, edge.url)
        with Containerd(tmp_path / "ctrd") as ctrd:
            for ref, want in ((f"{HOST}/pos/app:v1", idx.digest), (f"{HOST}/pos/tool@{tool_digest}", tool_digest)):
                r = ctrd.pull(ref, hosts)
                assert r.returncode == 0, r.stderr + ctrd.log_tail()
                assert ctrd.image_digest(ref) == want


def test_list_edits_take_effect_while_the_daemon_runs(tmp_path, registry):
    a = make_image(53, layer_size=256 * 1024)
    b = make_image(54, layer_size=256 * 1024)
    push(registry.url, "pos/a", "v1", a)
    push(registry.url, "pos/b", "v1", b)
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text("# pinned at this branch\nimages:\n"
                      f"  - {HOST}/pos/a:v1   # the first one\n")
    doc = make_config(tmp_path / "data", {HOST: registry.url}, default=HOST, pinned=str(pinned),
                      sync={"watch_interval": "200ms"})
    with EdgeProcess(tmp_path, doc) as edge:
        def states():
            return {e["ref"]: e["state"] for e in status(edge)["sync"]["entries"]}
        assert wait_until(lambda: states() == {f"{HOST}/pos/a:v1": "complete"}, 20)
        r = cli("pin", "add", f"{HOST}/pos/b:v1", "--config", str(edge.config_path))
        assert r.returncode == 0 and "added" in r.stdout, r.stderr
        assert pinned.read_text().startswith("# pinned at this branch\nimages:\n"
                                             f"  - {HOST}/pos/a:v1   # the first one\n")
        assert wait_until(lambda: states().get(f"{HOST}/pos/b:v1") == "complete", 20), states()
        for blob in b.blobs:
            assert registry.count("GET", rf"/v2/pos/b/blobs/{blob.digest}") == 1
        # `edgecache sync` now asks the daemon and follows its progress.
        r = cli("sync", "--config", str(edge.config_path))
        assert r.returncode == 0, r.stderr
        assert "pinned: 2/2 complete" in r.stdout and f"{HOST}/pos/b:v1" in r.stdout
        # Removing an entry unpins it only after the retention period (24h by default).
        r = cli("pin", "rm", f"{HOST}/pos/a:v1", "--config", str(edge.config_path))
        assert r.returncode == 0, r.stderr
        assert wait_until(lambda: f"{HOST}/pos/a:v1" not in states(), 20)
        assert status(edge)["sync"]["retained"] == 1
        assert status(edge)["pinned_bytes"] >= sum(x.size for x in a.blobs) + sum(x.size for x in b.blobs)
        # SIGHUP reloads as well.
        pinned.write_text(pinned.read_text() + f"  - {HOST}/pos/a:v1\n")
        edge.proc.send_signal(1)
        assert wait_until(lambda: states().get(f"{HOST}/pos/a:v1") == "complete", 20)


def test_sync_exits_non_zero_when_a_pinned_image_fails(tmp_path, registry):
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(f"images:\n  - {HOST}/pos/nothing:v1\n")
    doc = make_config(tmp_path / "data", {HOST: registry.url}, default=HOST, pinned=str(pinned))
    edge = EdgeProcess(tmp_path, doc)
    r = cli("sync", "--config", str(edge.config_path))
    assert r.returncode == 1
    assert "failed" in r.stdout and "pinned: 0/1 complete, 1 failed" in r.stdout


def test_prefetch_add_keeps_a_commented_file(tmp_path, registry):
    prefetch = tmp_path / "prefetch.yaml"
    original = ("# Branch prefetch list.\n# Owner: platform team\nimages:\n"
                f"  # tools\n  - {HOST}/tools/debug:1   # the debug shell\n\n# end\n")
    prefetch.write_text(original)
    doc = make_config(tmp_path / "data", {HOST: registry.url}, default=HOST, prefetch=str(prefetch))
    edge = EdgeProcess(tmp_path, doc)
    r = cli("prefetch", "add", f"{HOST}/tools/net:2", "--config", str(edge.config_path))
    assert r.returncode == 0, r.stderr
    assert prefetch.read_text() == original.replace(
        "# the debug shell\n", f"# the debug shell\n  - {HOST}/tools/net:2\n")
    r = cli("prefetch", "ls", "--config", str(edge.config_path))
    assert r.returncode == 0 and f"{HOST}/tools/net:2" in r.stdout and "prefetch.yaml:6" in r.stdout


def test_with_the_real_registry_pins_survive_lru_and_a_moved_tag_switches_only_when_complete(tmp_path, registry):
    MiB = 1024 * 1024
    old = make_image(55, layers=2, layer_size=512 * 1024)
    new = make_image(56, layers=2, layer_size=512 * 1024)
    push(registry.url, "pos/app", "v1", old)
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(f"images:\n  - {HOST}/pos/app:v1\n")
    doc = make_config(tmp_path / "data", {HOST: registry.url}, default=HOST, pinned=str(pinned),
                      tag_ttl="0s", cache={"max_size": 2 * MiB})
    with EdgeProcess(tmp_path, doc) as edge:
        def tag_digest():
            req = urllib.request.Request(f"{edge.url}/v2/pos/app/manifests/v1", method="HEAD",
                                         headers={"Accept": old.media_type})
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.headers["Docker-Content-Digest"]

        def sync():
            return cli("sync", "--config", str(edge.config_path))

        assert sync().returncode == 0
        # Pull far more than max_size of other images through the cache: the pinned blobs stay.
        for seed in range(57, 61):
            filler = make_image(seed, layers=1, layer_size=1 * MiB)
            push(registry.url, f"other/f{seed}", "v1", filler)
            with urllib.request.urlopen(f"{edge.url}/v2/other/f{seed}/blobs/{filler.layers[0].digest}") as r:
                r.read()
        assert wait_until(lambda: status(edge)["store"]["evictions"] > 0, 10)
        for b in old.blobs:
            d = b.digest.split(":")[1]
            assert (tmp_path / "data" / "blobs" / "sha256" / d[:2] / d).exists()
        # The tag moves upstream, but one of the new image's layers cannot be fetched:
        # the sync fails and the tag keeps answering the old, complete image.
        push(registry.url, "pos/app", "v1", new)
        req = urllib.request.Request(f"{registry.url}/v2/pos/app/blobs/{new.layers[1].digest}", method="DELETE")
        urllib.request.urlopen(req, timeout=10).read()
        r = sync()
        assert r.returncode == 1 and "failed" in r.stdout
        assert tag_digest() == old.digest
        # Once the layer is back, the sync completes and only then does the tag switch.
        push(registry.url, "pos/app", "v1", new)
        assert sync().returncode == 0
        assert tag_digest() == new.digest
        assert status(edge)["sync"]["retained"] == 1      # the old image stays pinned a while
