"""Stopping child processes the same way everywhere."""
from __future__ import annotations

import signal
import subprocess


def stop_process(proc: subprocess.Popen | None, timeout: float = 5.0, sig: int = signal.SIGTERM) -> int | None:
    """Send sig, wait up to timeout, then SIGKILL; returns the exit code (None if there was no process)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
