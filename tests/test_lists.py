"""List files: parsing with file:line problems, and edits that keep the rest of the file."""
import datetime as dt

import pytest
import yaml

from edgecache.cron import Cron
from edgecache.sync import listedit
from edgecache.errors import ListError
from edgecache.sync.lists import parse_ref, parse_text

UP = {"registry.corp.example", "docker.io"}
D = "sha256:" + "a" * 64


def test_both_entry_forms_and_their_defaults():
    text = f"""images:
  - registry.corp.example/pos/backend@{D}   # a plain reference
  - ref: registry.corp.example/pos/frontend:2.4
    platforms: [linux/arm64]
  - ref: registry.corp.example/pos/cashier:1.0
    track: false
  - busybox:1.37
"""
    entries, problems = parse_text(text, "p.yaml", UP, default_platform="linux/amd64")
    assert problems == []
    got = [(str(e.ref), e.platforms, e.track, e.line) for e in entries]
    assert got == [(f"registry.corp.example/pos/backend@{D}", ("linux/amd64",), False, 2),
                   ("registry.corp.example/pos/frontend:2.4", ("linux/arm64",), True, 3),
                   ("registry.corp.example/pos/cashier:1.0", ("linux/amd64",), False, 5),
                   ("docker.io/library/busybox:1.37", ("linux/amd64",), True, 7)]


@pytest.mark.parametrize("entry,why", [
    ("not a ref!", "invalid"), ("other.example/x:1", "not one of the configured upstreams"),
    (f"{{ref: registry.corp.example/x@{D}, track: true}}", "cannot be tracked"),
    ("{ref: registry.corp.example/x:1, platforms: [amd64]}", "platforms"),
    ("{ref: registry.corp.example/x:1, colour: red}", "unknown key"),
    ("{platforms: [linux/amd64]}", "needs `ref:`"),
    ("registry.corp.example/x@sha256:zz", "digest"),
])
def test_bad_entries_are_reported_with_file_and_line_and_the_rest_counts(entry, why):
    text = f"images:\n  - registry.corp.example/ok:1\n  - {entry}\n  - registry.corp.example/ok:2\n"
    entries, problems = parse_text(text, "p.yaml", UP)
    assert [str(e.ref) for e in entries] == ["registry.corp.example/ok:1", "registry.corp.example/ok:2"]
    assert len(problems) == 1 and problems[0].line == 3 and problems[0].file == "p.yaml"
    assert why in problems[0].reason and not problems[0].whole_file


def test_a_file_that_does_not_parse_is_one_whole_file_problem():
    entries, problems = parse_text("images:\n  - a\n  - [b\n", "p.yaml", UP)
    assert entries == [] and problems[0].whole_file and problems[0].line >= 3


def test_parse_ref_forms():
    assert str(parse_ref("alpine", UP)) == "docker.io/library/alpine:latest"
    assert str(parse_ref("index.docker.io/library/alpine:3", UP)) == "docker.io/library/alpine:3"
    assert parse_ref(f"registry.corp.example/a/b:1@{D}", UP).digest == D


COMMENTED = f"""# Branch POS images -- reviewed by the platform team.
images:
  # the backend, fixed
  - registry.corp.example/pos/backend@{D}   # v1.8.2
  - ref: registry.corp.example/pos/frontend:2.4    # web
    platforms: [linux/arm64]

  # kiosk, tracked
  - registry.corp.example/pos/kiosk:3

# end of list
"""


def test_add_keeps_comments_order_and_formatting(tmp_path):
    p = tmp_path / "prefetch.yaml"
    p.write_text(COMMENTED)
    assert listedit.add(p, "registry.corp.example/pos/cashier:1.0", UP) is True
    text = p.read_text()
    assert text == COMMENTED.replace("  - registry.corp.example/pos/kiosk:3\n",
                                     "  - registry.corp.example/pos/kiosk:3\n"
                                     "  - registry.corp.example/pos/cashier:1.0\n")
    assert listedit.add(p, "registry.corp.example/pos/cashier:1.0", UP) is False   # no-op
    assert p.read_text() == text
    assert list(tmp_path.iterdir()) == [p]          # no temp file left behind


def test_remove_takes_only_the_entrys_own_lines(tmp_path):
    p = tmp_path / "pinned.yaml"
    p.write_text(COMMENTED)
    assert listedit.remove(p, "registry.corp.example/pos/frontend:2.4", UP) == 1
    assert p.read_text() == COMMENTED.replace(
        "  - ref: registry.corp.example/pos/frontend:2.4    # web\n    platforms: [linux/arm64]\n", "")
    assert listedit.remove(p, "registry.corp.example/pos/frontend:2.4", UP) == 0


def test_add_to_an_empty_or_missing_file(tmp_path):
    p = tmp_path / "new.yaml"
    listedit.add(p, "busybox:1.37", UP)
    assert parse_text(p.read_text(), "x", UP)[0][0].ref.repo == "library/busybox"
    q = tmp_path / "empty.yaml"
    q.write_text("# nothing yet\nimages: []\n")
    listedit.add(q, "busybox:1.37", UP)
    assert q.read_text().startswith("# nothing yet\nimages:\n  - busybox:1.37\n")


def test_a_bad_reference_is_refused_before_the_file_is_touched(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(COMMENTED)
    with pytest.raises(ValueError):
        listedit.add(p, "unknown.example/x:1", UP)
    with pytest.raises(ListError):
        q = tmp_path / "flow.yaml"
        q.write_text("images: [registry.corp.example/a:1]\n")
        listedit.add(q, "registry.corp.example/b:1", UP)
    assert p.read_text() == COMMENTED


@pytest.mark.parametrize("expr,after,expect", [
    ("0 */6 * * *", dt.datetime(2026, 11, 27, 23, 5), dt.datetime(2026, 11, 28, 0, 0)),
    ("0 */6 * * *", dt.datetime(2026, 11, 28, 0, 0), dt.datetime(2026, 11, 28, 6, 0)),
    ("30 2 * * 1-5", dt.datetime(2026, 11, 27, 23, 5), dt.datetime(2026, 11, 30, 2, 30)),
    ("0 0 * * 7", dt.datetime(2026, 11, 27, 23, 5), dt.datetime(2026, 11, 29, 0, 0)),
    ("15 4 1 * *", dt.datetime(2026, 12, 31, 23, 5), dt.datetime(2027, 1, 1, 4, 15)),
])
def test_cron(expr, after, expect):
    assert Cron.parse(expr).next_after(after) == expect


@pytest.mark.parametrize("expr", ["* * *", "61 * * * *", "*/0 * * * *", "a * * * *", "0 0 31 2 *"])
def test_bad_cron(expr):
    with pytest.raises(ValueError):
        Cron.parse(expr).next_after(dt.datetime(2026, 1, 1))


def test_odd_indentation_and_crlf_are_followed(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_bytes(b"images:\r\n    -   registry.corp.example/a:1\r\n")
    listedit.add(p, "registry.corp.example/b:1", UP)
    assert p.read_bytes() == (b"images:\r\n    -   registry.corp.example/a:1\r\n"
                              b"    -   registry.corp.example/b:1\r\n")


def test_a_new_list_file_is_readable_by_the_service(tmp_path):
    p = tmp_path / "new.yaml"
    listedit.add(p, "busybox:1.37", UP)
    assert p.stat().st_mode & 0o044 == 0o044


def test_a_directory_list_is_one_list_for_add_and_rm(tmp_path):
    import subprocess
    import sys
    d = tmp_path / "lists"
    d.mkdir()
    (d / "00-common.yaml").write_text("images:\n  - registry.corp.example/a:1\n")
    (d / "10-site.yaml").write_text("images:\n  - registry.corp.example/b:1\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "pinned": str(d),
                                   "upstreams": {"registry.corp.example": {"url": "https://h"}}}))

    def cli(*a):
        return subprocess.run([sys.executable, "-m", "edgecache", "pin", *a, "--config", str(cfg)],
                              capture_output=True, text=True, timeout=60)
    r = cli("add", "registry.corp.example/b:1")
    assert r.returncode == 0 and "already listed" in r.stdout
    assert (d / "00-common.yaml").read_text() == "images:\n  - registry.corp.example/a:1\n"
    r = cli("rm", "registry.corp.example/b:1")
    assert r.returncode == 0 and "removed" in r.stdout
    assert (d / "10-site.yaml").read_text() == "images:\n"
