"""A Debian root (debootstrap) booted with systemd as PID 1 under systemd-nspawn,
sharing the host's network (loopback included), driven from the host with nsenter:
the real systemd the unit and the role's service tasks run under on a cache box."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
BASE = Path("/var/tmp/edgecache-test-root")   # the systemd root, made once per machine, copied per use
PACKAGES = "systemd,systemd-sysv,dbus,python3,python3-venv"


def make_root(path: Path, packages: str = PACKAGES) -> Path:
    """A bookworm root with systemd (and python3), made once and reused (about a minute)."""
    done = path / ".edgecache-root-ok"
    if done.exists():
        return path
    if path.exists():
        shutil.rmtree(path)
    subprocess.run(["debootstrap", "--variant=minbase", f"--include={packages}", "bookworm",
                    str(path), MIRROR], check=True, capture_output=True, timeout=900)
    done.touch()
    return path


def copy_of(base: Path, dest: Path, packages: str = PACKAGES) -> Path:
    """A root of this run's own at dest: a copy of base (made first if need be)."""
    make_root(base, packages)
    subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(dest)], check=True, timeout=300)
    return dest


def install_edgecache(root: Path, repo: Path) -> None:
    """edgecache into the root as a cache box has it: a virtualenv installed from a
    wheelhouse (no index) built from the repository, its system user, and the
    repository's unit file as it is."""
    wheels = root / "opt" / "edgecache" / "wheelhouse"
    wheels.mkdir(parents=True)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels), str(repo)],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"pip wheel: {r.stderr}")
    chroot(root, "python3", "-m", "venv", "/opt/edgecache/venv")
    chroot(root, "/opt/edgecache/venv/bin/pip", "install", "-q", "--no-index", "--find-links",
           "/opt/edgecache/wheelhouse", "edgecache")
    chroot(root, "useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
           "edgecache")
    shutil.copy(repo / "systemd" / "edgecache.service", root / "etc/systemd/system/edgecache.service")


def chroot(root: Path, *cmd: str) -> None:
    r = subprocess.run(["chroot", str(root), *cmd], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"chroot {' '.join(cmd)}: {r.returncode}\n{r.stdout}{r.stderr}")


class Machine:
    def __init__(self, root: Path, name: str = "edgecache-test") -> None:
        self.root = root
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.log = root.parent / f"{name}.console"
        self.pid: int | None = None            # the container's systemd, as the host sees it

    def boot(self, timeout: float = 60.0) -> "Machine":
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-q", "-D", str(self.root), "--boot", "--register=no",
             "--keep-unit", "--console=pipe", f"--machine={self.name}"],
            stdin=subprocess.DEVNULL, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.pid = self._init_pid()
            if self.pid is not None:
                r = self.run("systemctl", "is-system-running", check=False)
                if r.stdout.strip() in ("running", "degraded"):
                    return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.3)
        if self.proc.poll() is None:          # not left running behind the error
            self.proc.kill()
            self.proc.wait(timeout=10)
        raise RuntimeError("the container did not boot:\n" + self.log.read_text()[-3000:])

    def _init_pid(self) -> int | None:
        assert self.proc is not None
        for child in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split():
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
            except OSError:
                pass
        return None

    def run(self, *cmd: str, check: bool = True, timeout: float = 120.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        assert self.pid is not None
        r = subprocess.run(["nsenter", "-t", str(self.pid), "-a", *cmd], capture_output=True,
                           text=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", "-p", prop, "--value", unit).stdout.strip()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.pid is not None:
            self.run("systemctl", "poweroff", check=False, timeout=30)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> "Machine":
        return self.boot()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def available() -> str | None:
    """Why this machine cannot run the container, or None."""
    for tool in ("debootstrap", "systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} missing (apt-get install debootstrap systemd-container util-linux)"
    if os.geteuid() != 0:
        return "systemd-nspawn needs root"
    return None
