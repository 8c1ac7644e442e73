"""HTTP Range for blobs (RFC 9110 section 14): one byte range, or the whole body."""
from __future__ import annotations

import re

from edgecache.errors import RangeNotSatisfiable

_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of the requested range, or None for the whole body.

    A malformed or multi-range header is ignored (RFC 9110 14.2 lets a server
    ignore Range); an unsatisfiable one raises RangeNotSatisfiable (416).
    """
    if not header:
        return None
    m = _RANGE.fullmatch(header)
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if len(first) > 20 or len(last) > 20:
        return None
    if not first:                                # suffix: the last N bytes
        n = int(last)
        if n == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - n), size
    start = int(first)
    end = size if not last else int(last) + 1
    if last and end <= start:
        return None                              # invalid: last < first, ignore it
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, min(end, size)
