"""The Ansible role: lint-clean, syntactically valid, and a real run with a local
connection into a throwaway root, twice: the files are right and the second run
changes nothing. Services are not touched (no systemd runs here): the unit is
enabled the way `systemctl enable` does it, by its wants link."""
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml

from tests.conftest import IN_CI

# ansible-lint and two real runs of the role: minutes; `pytest -m 'not slow'` leaves it out, CI runs it.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANSIBLE = os.path.join(ROOT, "ansible")


def need(tool):
    if shutil.which(tool) is None:
        if IN_CI:
            pytest.fail(f"{tool} missing (pip install ansible-core ansible-lint)")
        pytest.skip(f"{tool} missing")


def run(cmd, **kw):
    return subprocess.run(cmd, cwd=ANSIBLE, capture_output=True, text=True, timeout=600, **kw)


def test_ansible_lint_is_clean():
    need("ansible-lint")
    r = run(["ansible-lint", "--offline", "--profile", "production"])
    assert r.returncode == 0, r.stdout + r.stderr


def test_syntax_check():
    need("ansible-playbook")
    r = run(["ansible-playbook", "--syntax-check", "site.yml"])
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    """The wheelhouse as docs/deploy.md builds it on the control node: edgecache and
    every dependency."""
    d = tmp_path_factory.mktemp("wheels")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(d), ROOT],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return d


def recap(out):
    m = re.search(r"ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out)
    assert m, out
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups())))


def test_role_runs_into_a_throwaway_root_twice(tmp_path, wheels):
    need("ansible-playbook")
    root = tmp_path / "root"
    inventory = tmp_path / "hosts.yml"
    node_root = tmp_path / "node-root"
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory.write_text(yaml.safe_dump({"all": {"children": {
        "branches": {"children": {"branch_berlin": {"hosts": {
            "cache-box": {**local, "edgecache_root": str(root),
                          "ansible_host": "edge-berlin-1"},
            # The site's second box: only named here (--limit leaves it out of the run).
            "cache-box-2": {**local, "ansible_host": "edge-berlin-2"}}}}},
        "k3s_nodes": {"children": {"k3s_berlin": {"hosts": {
            "k3s-node": {**local, "edgecache_root": str(node_root),
                         "edgecache_cache_group": "branch_berlin"}}}}}}}}))
    extra = {
        "edgecache_install_os_packages": False,
        "edgecache_create_user": False, "edgecache_manage_services": False,
        "edgecache_wheelhouse": str(wheels),
        "edgecache_site_token": "tok-berlin-4f9a2c",
        # Private: the nodes need the site's token.
        "edgecache_upstreams": {"registry.corp.example": {"url": "https://harbor.corp.example",
                                                          "public": False},
                                "docker.io": {"url": "https://registry-1.docker.io"},
                                # the registries the repository's images/ lists name
                                "registry.k8s.io": {"url": "https://registry.k8s.io"},
                                "ghcr.io": {"url": "https://ghcr.io"}},
        "edgecache_default_upstream": "registry.corp.example",
        "edgecache_pinned_extra": ["registry.corp.example/kiosk/app:3.2"],
        "edgecache_prefetch_extra": [{"ref": "registry.corp.example/pos/reports:1.4",
                                      "platforms": ["linux/arm64"]}],
        "edgecache_max_size": "120GiB",
        "edgecache_siblings_peers": ["http://edge-berlin-2:5000"],
        "edgecache_siblings_secret": "berlin-branch-secret-4711",
    }
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps(extra))
    cmd = ["ansible-playbook", "-i", str(inventory), "-e", f"@{vars_file}", "site.yml",
           "--limit", "cache-box,k3s-node"]
    # No package index: everything comes from the wheelhouse.
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", PIP_INDEX_URL="http://127.0.0.1:9/simple")

    # --check on the empty root works (and writes nothing).
    r = run([*cmd, "--check"], env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert not (root / "etc" / "edgecache" / "config.yaml").exists()

    r = run(cmd, env=env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert recap(r.stdout)["changed"] > 0
    # registries.yaml was written, so the K3s restart was asked for (skipped here: no systemd).
    assert "RUNNING HANDLER [edgecache : Restart k3s]" in r.stdout

    venv_bin = root / "opt" / "edgecache" / "venv" / "bin" / "edgecache"
    cfg = root / "etc" / "edgecache" / "config.yaml"
    c = subprocess.run([str(venv_bin), "check-config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert c.returncode == 0, c.stderr
    eff = yaml.safe_load(c.stdout)
    assert eff["cache"]["max_size"] == "120GiB"
    assert eff["default_upstream"] == "registry.corp.example"
    assert eff["pinned"] == str(root / "etc" / "edgecache" / "images" / "pinned.yaml")
    secret = root / "etc" / "edgecache" / "siblings.secret"
    assert eff["siblings"]["mdns"] is True and eff["siblings"]["secret_file"] == str(secret)
    assert eff["siblings"]["peers"] == ["http://edge-berlin-2:5000"]
    assert secret.read_text() == "berlin-branch-secret-4711\n" and secret.stat().st_mode & 0o777 == 0o640
    assert "berlin-branch-secret" not in r.stdout          # no_log
    pinned = yaml.safe_load((root / "etc" / "edgecache" / "images" / "pinned.yaml").read_text())["images"]
    base = yaml.safe_load(open(os.path.join(ROOT, "images", "pinned.yaml")))["images"]
    assert pinned == base + ["registry.corp.example/kiosk/app:3.2"]
    prefetch = yaml.safe_load((root / "etc" / "edgecache" / "images" / "prefetch.yaml").read_text())["images"]
    assert prefetch[-1] == {"ref": "registry.corp.example/pos/reports:1.4", "platforms": ["linux/arm64"]}
    # The lists the role wrote are valid lists for edgecache itself.
    ls = subprocess.run([str(venv_bin), "pin", "ls", "--config", str(cfg)], capture_output=True,
                        text=True, timeout=60)
    assert ls.returncode == 0 and "registry.corp.example/kiosk/app:3.2" in ls.stdout, ls.stderr
    reg = yaml.safe_load((root / "etc" / "rancher" / "k3s" / "registries.yaml").read_text())
    assert reg["mirrors"] == {name: {"endpoint": ["http://127.0.0.1:5000"]}
                              for name in extra["edgecache_upstreams"]}
    assert reg["configs"] == {"127.0.0.1:5000": {"auth": {"username": "berlin",
                                                          "password": "tok-berlin-4f9a2c"}}}
    # The site's token, in the tokens file the config names.
    tokens = root / "etc" / "edgecache" / "tokens"
    assert tokens.read_text() == "berlin:tok-berlin-4f9a2c\n" and tokens.stat().st_mode & 0o777 == 0o640
    assert eff["access"]["tokens_file"] == str(tokens)
    assert "tok-berlin-4f9a2c" not in r.stdout                   # no_log
    assert (root / "opt" / "edgecache" / "wheelhouse").is_dir()
    unit = root / "etc" / "systemd" / "system" / "edgecache.service"
    assert unit.read_text() == open(os.path.join(ROOT, "systemd", "edgecache.service")).read()
    link = root / "etc" / "systemd" / "system" / "multi-user.target.wants" / "edgecache.service"
    assert os.readlink(link) == "/etc/systemd/system/edgecache.service"

    # The site's K3s nodes get only the client side, pointing at the cache box.
    node_reg = yaml.safe_load((node_root / "etc" / "rancher" / "k3s" / "registries.yaml").read_text())
    # Every cache box of the site, in order (then K3s's fallback: the registry itself).
    boxes = ["http://edge-berlin-1:5000", "http://edge-berlin-2:5000"]
    assert node_reg["mirrors"]["registry.corp.example"] == {"endpoint": boxes}
    assert node_reg["configs"] == {f"edge-berlin-{n}:5000": {"auth": {
        "username": "berlin", "password": "tok-berlin-4f9a2c"}} for n in (1, 2)}
    assert not (node_root / "opt").exists() and not (node_root / "etc" / "edgecache").exists()
    dropin = root / "etc" / "systemd" / "system" / "edgecache.service.d" / "ansible.conf"
    assert "ExecStart=/opt/edgecache/venv/bin/edgecache serve" in dropin.read_text()

    # Idempotent: the second run changes nothing.
    r = run(cmd, env=env)
    assert r.returncode == 0, r.stdout[-3000:]
    assert recap(r.stdout)["changed"] == 0, r.stdout[-3000:]
    assert "RUNNING HANDLER" not in r.stdout           # nothing changed: K3s is left alone

    # The containerd flavour writes one hosts.toml per registry.
    extra["edgecache_client"] = "containerd"
    vars_file.write_text(json.dumps(extra))
    r = run(cmd, env=env)
    assert r.returncode == 0, r.stdout[-3000:]
    hosts = tomllib.loads((root / "etc" / "containerd" / "certs.d" / "docker.io" / "hosts.toml").read_text())
    assert hosts["server"] == "https://registry-1.docker.io"
    assert hosts["host"]["http://127.0.0.1:5000"]["capabilities"] == ["pull", "resolve"]
    node_hosts = (node_root / "etc" / "containerd" / "certs.d" / "docker.io" / "hosts.toml").read_text()
    assert list(tomllib.loads(node_hosts)["host"]) == boxes           # in order

    # A private upstream and no token: the role stops, saying why (nodes would get 401).
    extra["edgecache_site_token"] = ""
    vars_file.write_text(json.dumps(extra))
    r = run([*cmd[:-2], "--limit", "cache-box", "--check"], env=env)
    assert r.returncode != 0 and "private" in r.stdout and "401" in r.stdout, r.stdout[-2000:]
