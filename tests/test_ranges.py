import pytest

from edgecache.errors import RangeNotSatisfiable
from edgecache.server.ranges import parse_range


@pytest.mark.parametrize("h,expect", [
    (None, None), ("bytes=0-9", (0, 10)), ("bytes=10-", (10, 100)), ("bytes=-10", (90, 100)),
    ("bytes=-1000", (0, 100)), ("bytes=90-1000", (90, 100)), ("bytes=5-4", None),
    ("items=0-1", None), ("bytes=0-1,5-6", None), ("bytes=", None), ("bytes=-", None),
    # A huge last-byte is clamped to the end (RFC 9110 14.1.1), a huge suffix is all of it;
    # digits of other scripts are not digits (int() would read "\u0661" as 1).
    ("bytes=0-" + "9" * 30, (0, 100)), ("bytes=10-" + "9" * 5000, (10, 100)),
    ("bytes=-" + "9" * 5000, (0, 100)), ("bytes=\u0661-\u0662", None),
    ("bytes=1\u0660-20", None), ("bytes\u00a0=0-1", None),
])
def test_parse(h, expect):
    assert parse_range(h, 100) == expect


@pytest.mark.parametrize("h", ["bytes=100-", "bytes=150-200", "bytes=-0",
                               "bytes=" + "9" * 30 + "-", "bytes=" + "9" * 5000 + "-1"])
def test_unsatisfiable(h):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(h, 100)


@pytest.mark.parametrize("h", ["bytes=-5", "bytes=0-", "bytes=0-0"])
def test_no_range_of_an_empty_body_is_satisfiable(h):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(h, 0)
