"""Talking to systemd: readiness and the watchdog (sd_notify), without libsystemd.

With Type=notify, systemd passes NOTIFY_SOCKET; we send READY=1 once the store
is open and the listener bound, then WATCHDOG=1 at half the WatchdogSec interval
for as long as the event loop and the store answer. Outside systemd, nothing.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Callable, Mapping

log = logging.getLogger("edgecache.systemd")


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        # An abstract socket is written with a leading "@".
        self.address = "\0" + addr[1:] if addr.startswith("@") else addr
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        ours = not pid or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 1e6 / 2 if usec.isdigit() and ours else None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, message: str) -> bool:
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(message.encode(), self.address)
            return True
        except OSError as e:
            log.warning("sd_notify(%s) failed: %s", message.split("\n")[0], e)
            return False

    async def watchdog(self, healthy: Callable[[], bool]) -> None:
        """Ping while healthy; a stuck loop or a failing store stops the pings."""
        if self.watchdog_interval is None:
            return
        while True:
            await asyncio.sleep(self.watchdog_interval)
            if healthy():
                self.notify("WATCHDOG=1")
            else:
                log.error("unhealthy: not pinging the systemd watchdog")
