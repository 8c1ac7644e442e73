"""The daemon's resident memory: glibc's malloc arenas capped.

glibc gives each thread that allocates its own arena (up to 8 per core), and an arena
keeps what was freed in it: the threads that read blob chunks for TLS clients and
the fills leave a few MiB each behind. Two arenas hold the same work in less. Other
C libraries (musl) have no arenas and no mallopt: nothing to do there.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("edgecache")

M_ARENA_MAX = -8          # glibc's malloc.h
ARENAS = 2


def cap_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Before any thread starts; True when the C library took the setting."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_ARENA_MAX, arenas))
    if not ok:
        log.debug("mallopt(M_ARENA_MAX, %d) refused", arenas)
    return ok
