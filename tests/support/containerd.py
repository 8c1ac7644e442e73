"""A private containerd daemon (own root/state/socket) driven with `ctr`, pulling the way K3s does via hosts.toml."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from .procs import stop_process

NAMESPACE = "k8s.io"  # what K3s/kubelet use; keeps pulled images where a real node would have them


def available() -> bool:
    """containerd needs root (mounts, chown of snapshot dirs) and both binaries."""
    return os.geteuid() == 0 and all(shutil.which(b) for b in ("containerd", "ctr"))


def write_hosts_toml(
    hosts_dir: Path | str, registry_host: str, mirror_url: str, server: str = "http://127.0.0.1:9"
) -> Path:
    """hosts_dir/<registry_host>/hosts.toml with one pull/resolve mirror, in the form K3s writes.

    The default `server` is a dead port, so a pull can only succeed through the mirror.
    """
    d = Path(hosts_dir) / registry_host
    d.mkdir(parents=True, exist_ok=True)
    p = d / "hosts.toml"
    p.write_text(
        f'server = "{server}"\n'
        f'[host."{mirror_url}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )
    return p


class Containerd:
    """`containerd --config DIR/config.toml` as root, socket DIR/containerd.sock, daemon log DIR/containerd.log.

    snapshotter None picks overlayfs (what K3s uses) if containerd could load it here, else native
    (overlayfs cannot stack on an overlay-rooted /tmp, as in some CI containers).
    """

    def __init__(self, workdir: Path | str | None = None, snapshotter: str | None = None) -> None:
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="ctrd-"))
        self.snapshotter = snapshotter
        # sun_path is 108 bytes; a deep caller dir (pytest tmp_path) gets its sockets in a short temp dir instead.
        sock_dir = self.dir if len(str(self.dir)) < 80 else Path(tempfile.mkdtemp(prefix="ctrd-sock-"))
        self._sock_dir = None if sock_dir == self.dir else sock_dir
        self.socket = sock_dir / "containerd.sock"
        self.config_path = self.dir / "config.toml"
        self.log_path = self.dir / "containerd.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> None:
        d = self.dir
        self.config_path.write_text(f"""version = 2
root = "{d / 'root'}"
state = "{d / 'state'}"
# No CRI (we only pull with ctr) and no snapshotters that just log load failures in a sandbox.
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"
""")

    def start(self, timeout: float = 15.0) -> "Containerd":
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                ["containerd", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while self.ctr("version", check=False).returncode != 0:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"containerd did not start:\n{self.log_tail()}")
            time.sleep(0.1)
        if self.snapshotter is None:
            self.snapshotter = "overlayfs" if self._plugin_ok("io.containerd.snapshotter.v1", "overlayfs") else "native"
        return self

    def _plugin_ok(self, type_: str, id_: str) -> bool:
        # `ctr plugins ls` columns: TYPE ID PLATFORMS STATUS
        return any(line.split()[:2] == [type_, id_] and line.split()[-1] == "ok"
                   for line in self.ctr("plugins", "ls").stdout.splitlines()[1:])

    def ctr(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "-a", str(self.socket), "-n", NAMESPACE, *args],
            capture_output=True, text=True, check=check, timeout=timeout,
        )

    def pull(
        self, ref: str, hosts_dir: Path | str, platform: str = "linux/amd64", plain_http: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """`ctr images pull` through hosts_dir; returns the result (check .returncode / .stderr yourself)."""
        args = ["images", "pull", "--hosts-dir", str(hosts_dir), "--platform", platform]
        if self.snapshotter:
            args += ["--snapshotter", self.snapshotter]
        if plain_http:
            args.append("--plain-http")
        return self.ctr(*args, ref, check=False, timeout=timeout)

    def image_digest(self, ref: str) -> str | None:
        """Digest recorded for ref (the top manifest/index digest), or None if it is not there."""
        # Columns: REF TYPE DIGEST SIZE PLATFORMS LABELS; DIGEST comes before SIZE's embedded space ("1.2 KiB").
        for line in self.ctr("images", "ls").stdout.splitlines()[1:]:
            cols = line.split()
            if cols and cols[0] == ref:
                return cols[2]
        return None

    def remove_image(self, ref: str) -> None:
        self.ctr("images", "rm", "--sync", ref, check=False)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc, timeout)
        self._unmount_all()

    def _unmount_all(self) -> None:
        """Unmount anything left under our dir (snapshot/unpack mounts), deepest first."""
        prefix = str(self.dir.resolve()) + "/"
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        for mp in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True)

    def cleanup(self) -> None:
        self.stop()
        if self._sock_dir is not None:
            shutil.rmtree(self._sock_dir, ignore_errors=True)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Containerd":
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.cleanup()
