"""Descriptors for reading blob files, opened without access-time updates.

The store keeps its own record of last use (index.py), and the copying path reads
chunks on the event loop (server/blob_response.py): an access-time update is an inode
write, which on ext4 can wait for the journal, and under relatime a file still being
filled (its mtime moving) would take one on most reads. O_NOATIME needs the file's
owner, which the store is, or CAP_FOWNER; without either, a plain read-only descriptor.
"""
from __future__ import annotations

import os

_NOATIME = getattr(os, "O_NOATIME", 0)


def open_for_reading(path: str | os.PathLike[str]) -> int:
    try:
        return os.open(path, os.O_RDONLY | _NOATIME)
    except PermissionError:
        if not _NOATIME:
            raise
        return os.open(path, os.O_RDONLY)       # not ours to open without atime
