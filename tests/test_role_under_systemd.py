"""The Ansible role with its service tasks under a real systemd as PID 1: the
playbook runs inside a booted Debian root (systemd-nspawn), with a local connection,
installs from a wheelhouse with no package index, creates the user, enables and
starts the unit (which waits for READY), and its handlers restart and reload it.
A second run changes nothing; a list edit reloads, not restarts."""
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import require_nspawn
from tests.support import nspawn
from tests.support.eventually import wait_until
from tests.support.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parent.parent
REPO = "/srv/edgecache"                  # the repository's copy inside the box


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    require_nspawn()
    work = tmp_path_factory.mktemp("role")
    root = nspawn.copy_of(nspawn.BASE, work / "root")
    repo = root / REPO.lstrip("/")
    for part in ("ansible", "systemd", "images"):
        shutil.copytree(ROOT / part, repo / part)
    wheels = repo / "wheelhouse"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels), str(ROOT),
                        "ansible-core>=2.15"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    # The control node's Ansible, inside the box (a local connection).
    subprocess.run(["chroot", str(root), "sh", "-c",
                    f"python3 -m venv /opt/ansible && /opt/ansible/bin/pip install -q --no-index "
                    f"--find-links {REPO}/wheelhouse ansible-core"],
                   check=True, capture_output=True, timeout=600)
    m = nspawn.Machine(root, name="edgecache-role")
    m.boot()
    m.port = free_port()
    yield m
    m.stop()
    shutil.rmtree(work, ignore_errors=True)


def _play(box, extra: dict) -> subprocess.CompletedProcess:
    local = {"ansible_connection": "local", "ansible_python_interpreter": "/opt/ansible/bin/python"}
    inventory = {"all": {"children": {
        "branches": {"children": {"branch_berlin": {"hosts": {
            "cache-box": {**local, "ansible_host": "127.0.0.1"}}}}},
        # A node of the site, its files under /srv/node (the role's client side only).
        "k3s_nodes": {"children": {"k3s_berlin": {"hosts": {
            "node": {**local, "edgecache_root": "/srv/node",
                     "edgecache_cache_group": "branch_berlin"}}}}}}}}
    (box.root / REPO.lstrip("/") / "test-hosts.yml").write_text(yaml.safe_dump(inventory))
    (box.root / REPO.lstrip("/") / "test-vars.json").write_text(json.dumps(extra))
    return box.run("sh", "-c", f"cd {REPO}/ansible && ANSIBLE_FORCE_COLOR=0 "
                   f"PIP_INDEX_URL=http://127.0.0.1:9/simple /opt/ansible/bin/ansible-playbook "
                   f"-i {REPO}/test-hosts.yml -e @{REPO}/test-vars.json site.yml",
                   check=False, timeout=900)


def _recap(out: str) -> dict:
    import re
    m = re.search(r"ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out)
    assert m, out[-3000:]
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups())))


def test_the_role_installs_starts_and_reloads_under_systemd(box, tmp_path):
    """And the node it configured pulls a private image through it with the token the
    role wrote (ctr with a hosts dir, the node's registries.yaml credentials)."""
    from tests.conftest import require_binaries, require_containerd
    from tests.support.containerd import Containerd, write_hosts_toml
    from tests.support.images import make_index, push
    from tests.support.registry import Registry
    require_binaries("docker-registry")
    harbor = Registry(workdir=tmp_path / "harbor", users={"robot": "s3cret"}).start()
    pushed = push(harbor.url, "kiosk/app", "3.2", make_index(71, layers=2),
                  auth=("robot", "s3cret"))
    (box.root / "etc/edgecache").mkdir(parents=True, exist_ok=True)
    (box.root / "etc/edgecache/harbor.pass").write_text("s3cret\n")
    extra = {
        "edgecache_install_os_packages": False,        # python3-venv is in the root already
        "edgecache_wheelhouse": f"{REPO}/wheelhouse",
        "edgecache_listen": f"127.0.0.1:{box.port}",
        "edgecache_upstreams": {"registry.corp.example": {
                                    "url": harbor.url, "username": "robot",
                                    "password_file": "/etc/edgecache/harbor.pass"},
                                "docker.io": {"url": "https://registry-1.docker.io"},
                                "registry.k8s.io": {"url": "https://registry.k8s.io"},
                                "ghcr.io": {"url": "https://ghcr.io"}},
        "edgecache_default_upstream": "registry.corp.example",
        "edgecache_site_token": "tok-berlin-77",
        "edgecache_client": "k3s",
        "edgecache_k3s_services": [],                  # no K3s in the box to restart
        "edgecache_siblings": False,
    }
    r = _play(box, extra)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert _recap(r.stdout)["failed"] == 0
    assert box.show("edgecache.service", "ActiveState") == "active"
    assert box.show("edgecache.service", "UnitFileState") == "enabled"
    assert box.show("edgecache.service", "User") == "edgecache"
    url = f"http://127.0.0.1:{box.port}"
    req = urllib.request.Request(url + "/_edgecache/status",
                                 headers={"Authorization": "Bearer tok-berlin-77"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        st = json.loads(resp.read())
    assert st["data_dir"] == "/var/lib/edgecache"
    pid = box.show("edgecache.service", "MainPID")

    again = _play(box, extra)
    assert again.returncode == 0 and _recap(again.stdout)["changed"] == 0, again.stdout[-3000:]
    assert "RUNNING HANDLER" not in again.stdout
    assert box.show("edgecache.service", "MainPID") == pid          # left alone

    # A list edit: reloaded (the same process), not restarted.
    extra["edgecache_pinned_extra"] = ["registry.corp.example/kiosk/app:3.2"]
    edit = _play(box, extra)
    assert edit.returncode == 0, edit.stdout[-3000:]
    assert "RUNNING HANDLER [edgecache : Reload edgecache]" in edit.stdout
    assert "Restart edgecache" not in edit.stdout
    assert box.show("edgecache.service", "MainPID") == pid
    journal = box.run("journalctl", "-u", "edgecache", "--no-pager", check=False).stdout
    assert wait_until(lambda: "kiosk/app" in box.run(
        "journalctl", "-u", "edgecache", "--no-pager", check=False).stdout, 10), journal[-2000:]

    # A config change: restarted, and up again (start waits for READY).
    extra["edgecache_max_size"] = "30GiB"
    changed = _play(box, extra)
    assert changed.returncode == 0, changed.stdout[-3000:]
    assert "RUNNING HANDLER [edgecache : Restart edgecache]" in changed.stdout
    assert box.show("edgecache.service", "MainPID") != pid
    assert box.show("edgecache.service", "ActiveState") == "active"

    # The node: the registries.yaml the role wrote names the box and the site's token.
    reg = yaml.safe_load((box.root / "srv/node/etc/rancher/k3s/registries.yaml").read_text())
    endpoint = f"http://127.0.0.1:{box.port}"
    assert reg["mirrors"]["registry.corp.example"] == {"endpoint": [endpoint]}
    auth = reg["configs"][f"127.0.0.1:{box.port}"]["auth"]
    require_containerd()
    hosts = tmp_path / "certs.d"
    write_hosts_toml(hosts, "registry.corp.example", endpoint)
    try:
        with Containerd(tmp_path / "ctrd") as ctrd:
            ref = "registry.corp.example/kiosk/app:3.2"
            assert ctrd.pull(ref, hosts).returncode != 0                # no token: 401
            ok = ctrd.ctr("images", "pull", "--hosts-dir", str(hosts), "--platform",
                          "linux/amd64", "--plain-http", "--user",
                          f"{auth['username']}:{auth['password']}", ref, check=False)
            assert ok.returncode == 0, ok.stderr + ctrd.log_tail()
            assert ctrd.image_digest(ref) == pushed
    finally:
        harbor.cleanup()
