"""Loopback port allocation and readiness polling."""
from __future__ import annotations

import socket
import ssl
import time
import urllib.error
import urllib.request


def free_port() -> int:
    """A currently unused TCP port on 127.0.0.1 (the kernel picks it; tiny reuse race is acceptable in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 10.0) -> None:
    """Poll until an HTTP GET to url gets any response (an error status still means the server is up).
    An https URL: any certificate (a loopback server of the test's own)."""
    deadline = time.monotonic() + timeout
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1.0, context=context):
                return
        except urllib.error.HTTPError as e:
            e.close()
            return
        except (OSError, urllib.error.URLError) as e:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout}s: {e}") from e
            time.sleep(0.05)
