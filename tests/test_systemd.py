"""systemd integration: the unit file checks clean, and `edgecache serve` speaks
sd_notify (READY after the listener, watchdog pings, RELOADING/READY on SIGHUP,
STOPPING on SIGTERM) to a NOTIFY_SOCKET of the test's own."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import yaml

from tests.conftest import require_binaries
from tests.support.edge import make_config
from tests.support.ports import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(ROOT, "systemd", "edgecache.service")


def _unit_for_here(tmp_path):
    """The unit with ExecStart pointing at this machine's edgecache (verify checks it exists)."""
    exe = shutil.which("edgecache") or sys.executable
    text = open(UNIT).read().replace("/opt/edgecache/venv/bin/edgecache", exe)
    p = tmp_path / "edgecache.service"
    p.write_text(text)
    return p


def test_unit_verifies_clean(tmp_path):
    require_binaries("systemd-analyze")
    r = subprocess.run(["systemd-analyze", "verify", str(_unit_for_here(tmp_path))],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_unit_exposure_is_low(tmp_path):
    require_binaries("systemd-analyze")
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(_unit_for_here(tmp_path))],
                       capture_output=True, text=True, timeout=60)
    line = [x for x in r.stdout.splitlines() if "Overall exposure level" in x][0]
    score = float(line.split("edgecache.service:")[1].split()[0])
    assert score <= 2.0, line


def test_unit_orders_before_k3s_and_runs_unprivileged():
    text = open(UNIT).read()
    assert "Before=k3s.service k3s-agent.service" in text
    assert "Type=notify" in text and "WatchdogSec=" in text and "ExecReload=" in text
    assert "User=edgecache" in text and "StateDirectory=edgecache" in text
    for k in ("ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes",
              "RestrictAddressFamilies="):
        assert k in text


def test_sd_notify_protocol(tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(15)
    port = free_port()
    lists = tmp_path / "pinned.yaml"
    lists.write_text("images: []\n")
    doc = make_config(tmp_path / "unused", {"a.example": "http://127.0.0.1:9"}, port=port,
                      default="a.example", pinned=str(lists))
    del doc["data_dir"]                        # STATE_DIRECTORY decides, as under systemd
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    state = tmp_path / "state"
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="400000", STATE_DIRECTORY=str(state))
    proc = subprocess.Popen([sys.executable, "-m", "edgecache", "serve", "--config", str(cfg)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        msg = sock.recv(4096).decode()
        assert msg.startswith("READY=1")
        # READY means ready: the listener answers and the store lives in STATE_DIRECTORY.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_edgecache/health", timeout=5) as r:
            assert r.status == 200
        assert (state / "lock").exists() and (state / "blobs").is_dir()
        pings = [sock.recv(4096).decode() for _ in range(3)]
        assert pings == ["WATCHDOG=1"] * 3
        proc.send_signal(signal.SIGHUP)
        got = []
        deadline = time.monotonic() + 10
        while "READY=1" not in got and time.monotonic() < deadline:
            m = sock.recv(4096).decode()
            if m != "WATCHDOG=1":
                got.append(m)
        assert got == ["RELOADING=1", "READY=1"]
        proc.send_signal(signal.SIGTERM)
        while (m := sock.recv(4096).decode()) == "WATCHDOG=1":
            pass
        assert m == "STOPPING=1"
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        sock.close()
