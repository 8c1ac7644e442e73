"""HTTP Range for blobs (RFC 9110 section 14): one byte range, or the whole body."""
from __future__ import annotations

import re

from edgecache.errors import RangeNotSatisfiable

# ASCII digits only: Python's \d (and int()) would take other scripts' digits too.
_RANGE = re.compile(r"[ \t]*bytes[ \t]*=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*")
_HUGE = 19          # digits past which a position is beyond any blob (and int() never slow)


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
    if size == 0:
        raise RangeNotSatisfiable(size)          # no byte of an empty body can be asked for
    if not first:                                # suffix: the last N bytes
        n = int(last) if len(last) <= _HUGE else size
        if n == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - n), size
    if len(first) > _HUGE:
        raise RangeNotSatisfiable(size)          # starts past the end of anything
    start = int(first)
    # A last-byte past the end means "to the end" (RFC 9110 14.1.1), however long.
    end = size if not last or len(last) > _HUGE else int(last) + 1
    if last and end <= start:
        return None                              # invalid: last < first, ignore it
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, min(end, size)
