"""The README's first set-up command, as written, on a fresh Debian 12 root (a
debootstrap root with python3 and no python3-venv, its package lists fetched as an
installed system has them): it installs and runs the cache on the embedded default,
which then answers on port 5000. Needs the Debian mirror and PyPI (package registries)."""
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import require_binaries, require_nspawn
from tests.support import nspawn

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parent.parent
FRESH = Path("/var/tmp/edgecache-test-fresh-debian")


def readme_command() -> str:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set-up", 1)[1]
    return re.search(r"^    (sudo apt-get .+)$", setup, re.M).group(1)


def test_the_readme_set_up_command_installs_and_runs_on_a_fresh_debian(tmp_path):
    require_nspawn()
    require_binaries("git")
    root = nspawn.copy_of(FRESH, tmp_path / "root", packages="python3,ca-certificates")
    assert not (root / "usr/lib/python3.11/ensurepip").exists()     # no python3-venv yet
    # This sandbox's plumbing, not the product's: its resolver, its CA bundle (a proxy may
    # sit in front of the registries) and pip's setting for it.
    for f in ("/etc/resolv.conf", "/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf"):
        if Path(f).exists():
            shutil.copy(f, root / f.lstrip("/"))
    sudo = root / "usr/local/bin/sudo"               # root already: sudo runs the command
    sudo.write_text('#!/bin/sh\nexec "$@"\n')
    sudo.chmod(0o755)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(root / "root/edgecache")], check=True,
                   timeout=120)

    def chroot(cmd: str, **kw):
        return subprocess.run(["chroot", str(root), "sh", "-c", cmd], capture_output=True,
                              text=True, **kw)
    r = chroot("apt-get update -qq", timeout=300)    # an installed system has its lists
    assert r.returncode == 0, r.stderr[-2000:]
    command = readme_command()
    proc = subprocess.Popen(["chroot", str(root), "sh", "-c",
                             f"cd /root/edgecache && {command}"],
                            stdout=open(tmp_path / "out", "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen("http://127.0.0.1:5000/_edgecache/health",
                                            timeout=2) as resp:
                    status = resp.status
                    break
            except OSError:
                time.sleep(1)
        out = (tmp_path / "out").read_text()[-3000:]
        assert status == 200, out
        with urllib.request.urlopen("http://127.0.0.1:5000/v2/", timeout=5) as resp:
            assert resp.status == 200
        assert (root / "var/lib/edgecache/blobs").is_dir()       # its data, as root
    finally:
        _kill_all_in(root)
        proc.wait(timeout=30)


def _kill_all_in(root: Path) -> None:
    """Every process whose root directory is the chroot: the cache and its shell."""
    import os
    import signal
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/root") == str(root):
                os.kill(int(pid), signal.SIGTERM)
        except OSError:
            pass
