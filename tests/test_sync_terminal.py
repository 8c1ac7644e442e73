"""`edgecache sync` in a real terminal (tmux), at 80 and 120 columns: one row per entry,
no row duplicated or overwritten, nothing wider than the terminal, log lines above
the table and never inside it, the summary after it."""
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import require_binaries
from tests.support.edge import make_config
from tests.support.images import make_image, push

pytestmark = pytest.mark.integration
HOST = "central.example"


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=30,
                          check=True).stdout


@pytest.mark.parametrize("columns", [80, 120])
def test_sync_draws_a_stable_table_with_logs_above_it(tmp_path, registry, columns):
    require_binaries("tmux")
    names = [f"pos/backend-service-with-a-long-name-{i}" for i in range(3)]
    for i, name in enumerate(names):
        push(registry.url, name, "v1", make_image(900 + i, layers=3, layer_size=3 * 1024 * 1024))
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text("images:\n" + "".join(f"  - {HOST}/{n}:v1\n" for n in names)
                      + f"  - {HOST}/pos/missing:v1\n")      # fails: a log line, a red row
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(make_config(tmp_path / "data", {HOST: registry.url},
                                                 default=HOST, pinned=str(pinned))))
    session = f"ec{columns}-{tmp_path.name[-8:]}"
    cmd = f"{sys.executable} -m edgecache sync --config {config}; echo EXIT=$?; sleep 120"
    _tmux("new-session", "-d", "-s", session, "-x", str(columns), "-y", "40", cmd)
    try:
        deadline = time.monotonic() + 90
        while "EXIT=" not in (screen := _tmux("capture-pane", "-p", "-S", "-", "-t", session)):
            assert time.monotonic() < deadline, screen
            time.sleep(0.3)
        lines = screen.rstrip("\n").splitlines()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert all(len(x) <= columns for x in lines), lines
    header = [i for i, x in enumerate(lines) if x.split()[:5] == ["list", "state", "MiB", "image", "refs"]]
    assert len(header) == 1, screen                    # drawn once, redrawn in place
    top = header[0]
    rows = lines[top + 1:top + 5]
    assert [r.split()[0] for r in rows] == ["pinned"] * 4, screen
    for name in names:                                 # each entry once, told apart, complete
        tail = name[-8:] + ":v1"
        assert sum(tail in x for x in lines[top:]) == 1, (name, screen)
        (row,) = [x for x in rows if tail in x]
        assert "complete" in row and "9.0/9.0" in row, row
    (failed,) = [x for x in rows if "missing" in x]
    assert "failed" in failed
    assert any("pos/missing" in x and "404" in x for x in lines[top + 5:]), screen
    # The syncer's warning about the failed entry is a log line above the table.
    logs = [i for i, x in enumerate(lines) if "WARNING" in x]
    assert logs and all(i < top for i in logs), screen
    assert "pos/missing:v1 failed" in " ".join(lines[logs[0]:top]), screen
    assert not any("WARNING" in x for x in lines[top:]), screen
    summary = [i for i, x in enumerate(lines) if x.startswith("pinned: 3/4 complete, 1 failed")]
    assert summary and summary[0] > top + 4, screen
    assert lines[-1] == "EXIT=1"
