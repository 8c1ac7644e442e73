"""The command line's calls to a running daemon: where it listens, the credentials
it wants, timeouts, and errors a person can act on (never a traceback)."""
from __future__ import annotations

import base64
import json
import shutil
from contextlib import contextmanager
from typing import Any, BinaryIO, Iterator
import urllib.error
import urllib.request
from pathlib import Path

from edgecache.config import Config
from edgecache.errors import DaemonError, DaemonTimeout

FIND_TIMEOUT = 2.0


def read_credentials(path: Path) -> str:
    """An Authorization value from a file: `USER:PASSWORD` (Basic) or a `TOKEN`
    (Bearer; tokens never hold a colon, see access.tokens_file)."""
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines()]
    except OSError as e:
        raise DaemonError(f"cannot read the credentials file {path}: {e.strerror}") from None
    line = next((ln for ln in lines if ln and not ln.startswith("#")), "")
    if not line:
        raise DaemonError(f"the credentials file {path} is empty")
    if ":" in line:
        return "Basic " + base64.b64encode(line.encode()).decode()
    return f"Bearer {line}"


class Daemon:
    def __init__(self, url: str, authorization: str | None) -> None:
        self.url = url
        self._auth = authorization

    @classmethod
    def find(cls, cfg: Config, credentials: Path | None = None) -> "Daemon | None":
        """The daemon serving this configuration (same data_dir), if one runs."""
        host = "127.0.0.1" if cfg.listen_host in ("0.0.0.0", "::", "") else cfg.listen_host
        path = credentials or cfg.access.cli_credentials_file
        d = cls(f"http://{host}:{cfg.listen_port}", read_credentials(path) if path else None)
        try:
            st = d.call("GET", "/_edgecache/status", timeout=FIND_TIMEOUT)
        except (DaemonTimeout, OSError, ValueError):
            return None
        return d if st.get("data_dir") == str(cfg.data_dir) else None

    def call(self, method: str, path: str, timeout: float) -> dict:
        with self._open(method, path, timeout) as r:
            return json.loads(r.read())

    def upload(self, path: str, body: BinaryIO, size: int, timeout: float) -> Iterator[dict]:
        """POST a file as the body; each JSON line of the answer as it comes (progress)."""
        with self._open("POST", path, timeout, body, size) as r:
            for line in r:
                if line.strip():
                    yield json.loads(line)

    def download(self, path: str, sink: BinaryIO, timeout: float) -> dict:
        """POST, the answer's body into sink; the report its X-Edgecache-Report gives."""
        with self._open("POST", path, timeout) as r:
            shutil.copyfileobj(r, sink, 1 << 20)
            return json.loads(r.headers.get("X-Edgecache-Report") or "{}")

    @contextmanager
    def _open(self, method: str, path: str, timeout: float,
              data: BinaryIO | None = None, size: int = 0) -> Iterator[Any]:
        headers = {"Authorization": self._auth} if self._auth else {}
        if data is not None:
            headers.update({"Content-Type": "application/octet-stream",
                            "Content-Length": str(size)})
        req = urllib.request.Request(self.url + path, method=method,
                                     data=data if data is not None else
                                     (b"" if method == "POST" else None), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                yield r
        except urllib.error.HTTPError as e:
            with e:
                detail = _oci_message(e.read())
            if e.code == 401:
                raise DaemonError(
                    f"the daemon at {self.url} wants credentials ({detail}): name a file with "
                    "USER:PASSWORD or a token in access.cli_credentials_file or "
                    "--credentials-file" if self._auth is None else
                    f"the daemon at {self.url} refused the credentials ({detail})") from None
            if e.code == 403:
                raise DaemonError(f"the daemon at {self.url} refused: {detail} "
                                  "(access.admin names who may)") from None
            raise DaemonError(f"the daemon at {self.url} answered {e.code}: {detail}") from None
        except TimeoutError:
            raise DaemonTimeout(f"the daemon at {self.url} did not answer {method} {path} within "
                              f"{timeout:g} s (--timeout)") from None


def _oci_message(body: bytes) -> str:
    try:
        err = json.loads(body)["errors"][0]
        return f"{err['code']}: {err.get('detail') or err.get('message')}"
    except (ValueError, KeyError, IndexError, TypeError):
        return body[:200].decode(errors="replace")
