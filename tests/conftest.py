import asyncio
import os
import shutil

import pytest

from tests.support import containerd
from tests.support.registry import Registry

# Integration tests use the real Debian packages. On a developer machine without
# them they skip; in CI (CI=true) a missing package is a failure, never a skip.
IN_CI = os.environ.get("CI") == "true"


def pytest_asyncio_loop_factories(config, item):
    """Async tests run on asyncio's loop; a module's LOOP_FACTORIES, on each of those."""
    return getattr(item.module, "LOOP_FACTORIES", None) or {"asyncio": asyncio.new_event_loop}


def require_binaries(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if not missing:
        return
    msg = f"missing {', '.join(missing)} (apt-get install docker-registry skopeo containerd)"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def require_containerd() -> None:
    require_binaries("containerd", "ctr")
    if not containerd.available():
        if IN_CI:
            pytest.fail("containerd needs root")
        pytest.skip("containerd needs root")


def require_nspawn() -> None:
    """A Debian root booted under systemd-nspawn (tests/support/nspawn.py) can run here."""
    from tests.support import nspawn
    why = nspawn.available()
    if why:
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture
def registry(tmp_path):
    """The real CNCF Distribution registry as the upstream, with an access log to count in."""
    require_binaries("docker-registry")
    reg = Registry(workdir=tmp_path / "registry").start()
    yield reg
    reg.cleanup()
