"""Siblings on a real LAN: three edgecache processes in network namespaces on one
bridge, finding each other over mDNS with no static configuration, the real
Distribution registry behind a rate-limited WAN link, and skopeo pulling on each
node from its own edgecache (127.0.0.1:5000 in the node's namespace, as K3s
does). Upstream traffic is counted in the registry's access log."""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

import pytest

from edgecache.reference import parse_digest
from edgecache.siblings.peers import rendezvous
from edgecache.store import layout
from tests.conftest import IN_CI, require_binaries
from tests.support.branch import Branch
from tests.support.edge import EdgeProcess
from tests.support.images import make_image, push
from tests.support.lan import NODES, Lan
from tests.support.registry import Registry

MiB = 1024 * 1024
# network namespaces, real mDNS and WAN shaping: minutes; `pytest -m 'not slow'` leaves it out, CI runs it.
pytestmark = pytest.mark.slow

WAN_RATE = "400mbit"


def _require_root_and_netns():
    require_binaries("docker-registry", "skopeo", "ip", "tc")
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("the LAN test needs root (network namespaces)")
        pytest.skip("needs root (network namespaces)")


@pytest.fixture(scope="module")
def lan(tmp_path_factory):
    _require_root_and_netns()
    tmp = tmp_path_factory.mktemp("lan")
    with Branch(nodes=len(NODES), wan_rate=WAN_RATE) as br:
        reg = Registry(workdir=tmp / "central", addr=br.addr("central"), port=5000,
                       netns=br.ns("central")).start()
        world = Lan(br, reg, tmp)
        try:
            yield world
        finally:
            world.stop_all()
            reg.cleanup()


def _owned_by(owner: str, seed0: int, **kw):
    """An image whose every blob the rendezvous gives to `owner` (so only it fetches them)."""
    for seed in range(seed0, seed0 + 500):
        img = make_image(seed, **kw)
        if all(rendezvous(list(NODES), b.digest) == owner for b in img.blobs):
            return img
    raise AssertionError("no such image")


def _ready(lan: Lan) -> bool:
    try:
        return all(lan.status(n)["siblings"]["live"] == len(NODES) - 1 for n in NODES)
    except OSError:
        return False


def _all_up(lan: Lan) -> None:
    """Every node running, with siblings, and every one seeing both others."""
    for n in NODES:
        if n not in lan.nodes:
            lan.start(n)
    assert lan.wait(lambda: _ready(lan)), [lan.status(n)["siblings"] for n in lan.nodes]


def test_nodes_find_each_other_and_fetch_a_shared_image_from_the_wan_once(lan, capsys):
    big_a = make_image(501, layers=4, layer_size=25 * MiB)
    big_b = make_image(502, layers=4, layer_size=25 * MiB)
    push(lan.reg.url, "demo/big", "a", big_a)
    push(lan.reg.url, "demo/big", "b", big_b)
    size = sum(b.size for b in big_a.blobs)

    # Without siblings: every node fetches the image over the WAN.
    for n in NODES:
        lan.start(n, siblings=False)
    alone = lan.pull_all("demo/big:b")
    alone_bytes = lan.upstream_bytes(big_b)
    lan.stop_all()

    # With siblings, found over mDNS: nothing about the others is configured.
    t0 = time.monotonic()
    for n in NODES:
        lan.start(n)
    assert lan.wait(lambda: _ready(lan)), [lan.status(n)["siblings"] for n in NODES]
    found_in = time.monotonic() - t0
    for n in NODES:
        peers = lan.status(n)["siblings"]["peers"]
        assert {p["node_id"] for p in peers if p["state"] == "up"} == set(NODES) - {n}
        assert all(p["via"] == "mdns" for p in peers)
    together = lan.pull_all("demo/big:a")
    together_bytes = lan.upstream_bytes(big_a)
    with capsys.disabled():
        print(f"\n[siblings] found each other over mDNS in {found_in:.1f} s; image {size / MiB:.0f} MiB, "
              f"WAN {WAN_RATE}, 3 nodes at once: without siblings {alone:.1f} s and "
              f"{alone_bytes / size:.2f}x the image over the WAN; with siblings {together:.1f} s "
              f"and {together_bytes / size:.2f}x")
    assert alone_bytes >= 2.9 * size
    assert together_bytes <= 1.02 * size           # about once (a few manifests aside)
    # Each node's blob bytes came from the WAN or a sibling, and the status says which.
    fetched = {n: sum(p["bytes_fetched"] for p in lan.status(n)["siblings"]["peers"]) for n in NODES}
    assert sum(fetched.values()) >= 2 * size * 0.99, fetched


def test_with_the_wan_cut_a_node_gets_an_image_it_never_pulled_from_a_sibling(lan):
    img = make_image(503, layers=2, layer_size=2 * MiB)
    push(lan.reg.url, "demo/small", "v1", img)
    _all_up(lan)
    lan.pull_all("demo/small:v1", names=("n1",))
    lan.br.wan(False)
    try:
        lan.pull_all("demo/small:v1", names=("n3",))
        layout_dir = lan.out("demo/small:v1", "n3")
        index = json.loads((layout_dir / "index.json").read_text())
        assert index["manifests"][0]["digest"] == img.digest
        st = lan.status("n3")
        assert st["upstreams"]["central.example"]["last_error"]     # it did try the WAN first
        assert sum(p["bytes_fetched"] for p in st["siblings"]["peers"]) >= sum(b.size for b in img.blobs)
        # The sibling path is closed to the wrong repository: under another name no node
        # gives the image, and no sibling sends a byte for it.
        def served_now():
            return {n: sum(lan.status(n)["siblings"]["served_bytes_by_node"].values()) for n in NODES}
        # A sibling counts what it served once its handler is done: let the counts settle.
        served = served_now()
        for _ in range(20):
            time.sleep(0.3)
            if (again := served_now()) == served:
                break
            served = again
        slowest = 0.0
        for n in NODES:
            for kind, d in [("manifests", img.digest)] + [("blobs", b.digest) for b in img.blobs]:
                t0 = time.monotonic()
                status = _http_status(f"{lan.nodes[n].url}/v2/demo/other/{kind}/{d}")
                slowest = max(slowest, time.monotonic() - t0)
                assert status in (404, 503), (n, kind, status)
        print(f"[siblings] wrong repository with the WAN cut: slowest answer {slowest:.1f} s")
        assert served_now() == served
    finally:
        lan.br.wan(True)


def _http_status(url: str) -> int:
    try:
        # As long as a client waits (containerd: 30 s): siblings and the cut WAN are tried.
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        e.close()
        return e.code


def test_killing_a_sibling_mid_transfer_does_not_fail_the_pull(lan):
    img = _owned_by("n2", 600, layers=1, layer_size=48 * MiB)
    push(lan.reg.url, "demo/kill", "v1", img)
    _all_up(lan)
    lan.pull_all("demo/kill:v1", names=("n2",))           # n2 holds it now, and only n2
    layer = img.layers[0]
    lan.br.shape("n2", "48mbit")                          # ~8 s to send it: time to kill n2
    try:
        pull = lan.skopeo("n3", "demo/kill:v1", lan.tmp / "out" / "kill-n3")

        def n3_streaming_from_n2() -> bool:
            fills = lan.status("n3")["fills_in_progress"]
            return any(f["source"] == "sibling n2" and f["bytes"] > 4 * MiB for f in fills)

        assert lan.wait(n3_streaming_from_n2, 20)
        lan.nodes["n2"].kill9()
        out, err = pull.communicate(timeout=120)
        assert pull.returncode == 0, err[-2000:]
        assert lan.reg.count("GET", rf"/v2/demo/kill/blobs/{layer.digest}") == 2   # n2's, n3's
        data = (lan.tmp / "n3" / "data")
        blob = layout.blob_path(data, parse_digest(layer.digest))
        assert blob.stat().st_size == layer.size
    finally:
        lan.br.shape("n2", None)
        lan.nodes.pop("n2", None)
        lan.start("n2")


def test_a_sibling_with_corrupt_bytes_is_detected_and_bypassed(lan):
    img = _owned_by("n1", 700, layers=1, layer_size=4 * MiB)
    push(lan.reg.url, "demo/rot", "v1", img)
    _all_up(lan)
    lan.pull_all("demo/rot:v1", names=("n1",))            # only n1 holds it
    layer = img.layers[0]
    path = layout.blob_path(lan.tmp / "n1" / "data", parse_digest(layer.digest))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10                          # bit rot on n1's disk
    path.write_bytes(bytes(data))
    lan.pull_all("demo/rot:v1", names=("n2",))
    assert lan.reg.count("GET", rf"/v2/demo/rot/blobs/{layer.digest}") == 2
    n1 = next(p for p in lan.status("n2")["siblings"]["peers"] if p["node_id"] == "n1")
    assert n1["state"] == "bad" and n1["failures"].get("wrong_bytes") == 1
    blob = layout.blob_path(lan.tmp / "n2" / "data", parse_digest(layer.digest))
    assert blob.read_bytes() == layer.data


def test_a_node_that_stops_says_goodbye(lan):
    _all_up(lan)
    lan.nodes.pop("n1").stop()                            # SIGTERM: goodbye over mDNS
    t0 = time.monotonic()

    def n1_forgotten() -> bool:
        return all("n1" not in {p["node_id"] for p in lan.status(n)["siblings"]["peers"]}
                   for n in ("n2", "n3"))

    # Forgotten, not just failing its checks (that would keep it listed as "down").
    assert lan.wait(n1_forgotten, 5)
    assert time.monotonic() - t0 < 2.5
    lan.start("n1")
    assert lan.wait(lambda: _ready(lan))


def test_a_node_with_a_copied_node_id_still_serves_and_says_so(lan, tmp_path):
    _all_up(lan)
    doc = lan.doc("n1", siblings=True)                 # n1's id, on a second box (here: port)
    doc["listen"] = "0.0.0.0:5001"
    doc["data_dir"] = str(tmp_path / "clone")
    clone = EdgeProcess(tmp_path, doc, netns_prefix=lan.br.exec_prefix("n1"),
                        url=f"http://{lan.br.addr('n1')}:5001").start()
    def status(url):
        with urllib.request.urlopen(url + "/_edgecache/status", timeout=5) as r:
            return json.load(r)["siblings"]

    try:
        # Each start advertises a name of its own: both see the other's record with
        # their id, and say so.
        assert lan.wait(lambda: status(clone.url)["node_id_clash"], 15)
        assert lan.wait(lambda: status(lan.nodes["n1"].url)["node_id_clash"], 15)
        assert "advertises node id 'n1'" in clone.stderr.read_text()
        assert "advertises node id 'n1'" in lan.nodes["n1"].stderr.read_text()
    finally:
        clone.stop()


def test_mdns_that_finds_no_one_says_so(tmp_path):
    _require_root_and_netns()
    with Branch(nodes=1) as br:
        doc = {"listen": "0.0.0.0:5000", "data_dir": str(tmp_path / "data"),
               "upstreams": {"central.example": {"url": f"http://{br.addr('central')}:5000"}},
               "siblings": {"node_id": "lonely", "health_interval": "0.5s"}}
        node = EdgeProcess(tmp_path, doc, netns_prefix=br.exec_prefix("n1"),
                           url=f"http://{br.addr('n1')}:5000").start()
        try:
            end = time.monotonic() + 15
            while "found no sibling" not in node.stderr.read_text() and time.monotonic() < end:
                time.sleep(0.2)
            assert "mDNS is on but found no sibling" in node.stderr.read_text()
        finally:
            node.stop()
