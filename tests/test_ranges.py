import pytest

from edgecache.errors import RangeNotSatisfiable
from edgecache.server.ranges import parse_range


@pytest.mark.parametrize("h,expect", [
    (None, None), ("bytes=0-9", (0, 10)), ("bytes=10-", (10, 100)), ("bytes=-10", (90, 100)),
    ("bytes=-1000", (0, 100)), ("bytes=90-1000", (90, 100)), ("bytes=5-4", None),
    ("items=0-1", None), ("bytes=0-1,5-6", None), ("bytes=", None), ("bytes=-", None),
    ("bytes=" + "9" * 30 + "-", None),
])
def test_parse(h, expect):
    assert parse_range(h, 100) == expect


@pytest.mark.parametrize("h", ["bytes=100-", "bytes=150-200", "bytes=-0"])
def test_unsatisfiable(h):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(h, 100)
