"""`edgecache client-config`: the snippets parse, name every upstream, and the
containerd hosts.toml it writes works for a real `ctr images pull`."""
import json
import subprocess
import sys
import tomllib

import pytest
import yaml

from edgecache import clientconfig as cc
from edgecache.config import build
from tests.conftest import require_containerd
from tests.support.containerd import Containerd
from tests.support.edge import EdgeProcess, make_config
from tests.support.images import make_index, push

EP = "http://edge.branch.lan:5000"


@pytest.fixture
def cfg(tmp_path):
    return build({"upstreams": {"docker.io": {"url": "https://registry-1.docker.io"},
                                "registry.corp.example": {"url": "https://harbor.corp.example"}}},
                 source="<t>", env={}, uid=0)


def test_k3s_registries_yaml(cfg):
    doc = yaml.safe_load(cc.k3s(cfg, EP))
    assert doc == {"mirrors": {"docker.io": {"endpoint": [EP]},
                               "registry.corp.example": {"endpoint": [EP]}}}
    assert yaml.safe_load(cc.k3s(cfg, EP, wildcard=True)) == {"mirrors": {"*": {"endpoint": [EP]}}}


def test_containerd_hosts_toml_keeps_the_registry_as_fallback(cfg):
    files = cc.containerd(cfg, EP)
    hub = tomllib.loads(files["docker.io"])
    assert hub["server"] == "https://registry-1.docker.io"
    assert hub["host"][EP]["capabilities"] == ["pull", "resolve"]
    assert tomllib.loads(files["registry.corp.example"])["server"] == "https://harbor.corp.example"


def test_docker_daemon_json_is_docker_hub_only(cfg):
    text, note = cc.docker(cfg, EP)
    assert json.loads(text) == {"registry-mirrors": [EP], "insecure-registries": ["edge.branch.lan:5000"]}
    assert "Docker Hub" in note


def test_podman_uses_the_path_prefix_form(cfg):
    doc = tomllib.loads(cc.podman(cfg, EP))
    assert doc["registry"][1] == {"location": "registry.corp.example",
                                  "mirror": [{"location": "edge.branch.lan:5000/registry.corp.example",
                                              "insecure": True}]}


def test_generated_hosts_toml_drives_a_real_ctr_pull(tmp_path, registry):
    require_containerd()
    idx = make_index(61, layers=2, layer_size=256 * 1024)
    pushed = push(registry.url, "pos/app", "v1", idx)
    doc = make_config(tmp_path / "data", {"central.example": registry.url}, default="central.example")
    with EdgeProcess(tmp_path, doc) as edge:
        hosts = tmp_path / "certs.d"
        r = subprocess.run([sys.executable, "-m", "edgecache", "client-config", "containerd",
                            "--config", str(edge.config_path), "--endpoint", edge.url,
                            "--output", str(hosts)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        toml = (hosts / "central.example" / "hosts.toml").read_text()
        assert f'[host."{edge.url}"]' in toml
        with Containerd(tmp_path / "ctrd") as ctrd:
            r = ctrd.pull("central.example/pos/app:v1", hosts)
            assert r.returncode == 0, r.stderr
            assert ctrd.image_digest("central.example/pos/app:v1") == pushed
        paths = [line["path"] for line in edge.access_log()]
        assert any(p.startswith("/v2/pos/app/manifests/v1?ns=central.example") for p in paths)
        assert any("/blobs/" in p and "ns=central.example" in p for p in paths)


def test_warnings_for_configs_a_client_cannot_use(tmp_path):
    no_default = build({"upstreams": {"docker.io": {"url": "https://registry-1.docker.io"}}},
                       source="<t>", env={}, uid=0)
    assert any("default_upstream: docker.io" in w for w in cc.warnings(no_default, "docker"))
    assert cc.warnings(no_default, "k3s") == []            # K3s and containerd send ?ns=
    private = build({"upstreams": {"harbor.example": {"url": "https://h", "username": "u",
                                                      "password": "p"}},
                     "default_upstream": "harbor.example"}, source="<t>", env={}, uid=0)
    [w] = cc.warnings(private, "k3s")
    assert "harbor.example" in w and "401" in w
    (tmp_path / "tokens").write_text("node:tok\n")
    fixed = build({"upstreams": {"harbor.example": {"url": "https://h", "username": "u",
                                                    "password": "p"}},
                   "default_upstream": "harbor.example", "access": {"tokens_file": "tokens"}},
                  source="<t>", env={}, uid=0, base=tmp_path)
    assert cc.warnings(fixed, "k3s") == []
    # check-config says it too, on stderr, and still succeeds.
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"upstreams": {"harbor.example": {
        "url": "https://h", "username": "u", "password": "p"}}}))
    r = subprocess.run([sys.executable, "-m", "edgecache", "check-config", str(p)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "warning:" in r.stderr and "401" in r.stderr


def test_nodes_pull_a_private_image_with_the_credentials_client_config_wrote(tmp_path):
    """A private upstream (Distribution with htpasswd); the cache hands its images to
    token holders only; `client-config k3s --credentials-file` writes the node's
    registries.yaml with the token; ctr pulls with those credentials (and gets 401
    without them)."""
    from tests.conftest import require_binaries
    from tests.support.registry import Registry
    require_binaries("docker-registry")
    require_containerd()
    priv = Registry(workdir=tmp_path / "priv", users={"robot": "s3cret"}).start()
    try:
        idx = make_index(61, layers=2)
        pushed = push(priv.url, "team/app", "v1", idx, auth=("robot", "s3cret"))
        (tmp_path / "tokens").write_text("branch-berlin:tok-4f9a\n")
        (tmp_path / "node.creds").write_text("branch-berlin:tok-4f9a\n")
        doc = make_config(tmp_path / "data", {"harbor.example": priv.url},
                          access={"tokens_file": str(tmp_path / "tokens")})
        doc["upstreams"]["harbor.example"].update(username="robot", password="s3cret")
        with EdgeProcess(tmp_path, doc) as edge:
            r = subprocess.run([sys.executable, "-m", "edgecache", "client-config", "k3s",
                                "--config", str(edge.config_path), "--endpoint", edge.url,
                                "--credentials-file", str(tmp_path / "node.creds")],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
            reg = yaml.safe_load(r.stdout)
            auth = reg["configs"][edge.url.split("://")[1]]["auth"]
            assert auth == {"username": "branch-berlin", "password": "tok-4f9a"}
            hosts = tmp_path / "certs.d"
            d = hosts / "harbor.example"
            d.mkdir(parents=True)
            (d / "hosts.toml").write_text(cc.containerd(build(doc, source="<t>", env={}, uid=0),
                                                        edge.url)["harbor.example"])
            with Containerd(tmp_path / "ctrd") as ctrd:
                denied = ctrd.pull("harbor.example/team/app:v1", hosts)
                assert denied.returncode != 0
                args = ["images", "pull", "--hosts-dir", str(hosts), "--platform", "linux/amd64",
                        "--plain-http", "--user", f"{auth['username']}:{auth['password']}",
                        "harbor.example/team/app:v1"]
                ok = ctrd.ctr(*args, check=False)
                assert ok.returncode == 0, ok.stderr + ctrd.log_tail()
                assert ctrd.image_digest("harbor.example/team/app:v1") == pushed
    finally:
        priv.cleanup()
