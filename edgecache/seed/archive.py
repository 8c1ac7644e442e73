"""Archives as they arrive on a disk, unpacked onto the store's file system (so their
blobs are renamed into place afterwards, never copied twice).

A directory (an OCI image layout) is copied; a tar is unpacked whatever its
compression (gzip or zstd, told by its first bytes, not its name: K3s ships
`.tar`, `.tar.gz` and `.tar.zst`). Streamed, in one pass: a compressed archive is
never seeked. Every member is checked before anything is written: no absolute
path, no `..`, no device, no link pointing outside the archive (docker save's
links between layers are made as hard links inside it), no more than MAX_MEMBERS
members, no more bytes than `limit`. Blocking: run on a thread.
"""
from __future__ import annotations

import gzip
import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable

import zstandard

from edgecache.errors import ArchiveError

MAX_MEMBERS = 200_000
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
COPY_CHUNK = 1 << 20


def compression(head: bytes) -> str | None:
    """"gzip", "zstd", or None (plain), from a file's first bytes."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return None


def _open(path: Path) -> BinaryIO:
    f = open(path, "rb")
    kind = compression(f.read(4))
    f.seek(0)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=f)          # type: ignore[return-value]
    if kind == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(f, closefd=True)  # type: ignore[return-value]
    return f


MAX_HEADER = 1 << 20        # a long name or pax header: tarfile reads it whole into memory


class _CappedTarInfo(tarfile.TarInfo):
    """Refuses extended headers larger than MAX_HEADER before tarfile reads them."""

    def _proc_member(self, tarfile_):         # type: ignore[override]
        if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                         tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE) and self.size > MAX_HEADER:
            raise ArchiveError(f"a {self.size}-byte extended header (at most {MAX_HEADER})")
        return super()._proc_member(tarfile_)


def _inside(name: str) -> PurePosixPath:
    """The member's path, relative and inside the archive, or ArchiveError."""
    p = PurePosixPath(name)
    parts = [x for x in p.parts if x not in ("", ".")]
    if p.is_absolute() or not parts or ".." in parts:
        raise ArchiveError(f"member {name[:200]!r} points outside the archive")
    return PurePosixPath(*parts)


def unpack(src: Path, into: Path, limit: int,
           progress: Callable[[int], None] | None = None) -> int:
    """Unpack (or copy) src into the new directory `into`; returns the bytes written."""
    into.mkdir(parents=True)
    if src.is_dir():
        return _copy_dir(src, into, limit, progress)
    written = members = 0
    links: list[tuple[PurePosixPath, PurePosixPath]] = []
    try:
        with _open(src) as stream, tarfile.open(fileobj=stream, mode="r|",
                                                tarinfo=_CappedTarInfo) as tf:
            for m in tf:
                members += 1
                if members > MAX_MEMBERS:
                    raise ArchiveError(f"more than {MAX_MEMBERS} members")
                rel = _inside(m.name)
                if m.isdir():
                    continue
                if m.issym() or m.islnk():
                    target = PurePosixPath(m.linkname)
                    if m.issym():
                        target = rel.parent / target
                    links.append((rel, _inside(os.path.normpath(str(target)))))
                    continue
                if not m.isfile():
                    raise ArchiveError(f"member {m.name[:200]!r} is not a file")
                written += m.size
                if written > limit:
                    raise ArchiveError(f"more than {limit} bytes unpacked: not enough room")
                dest = into / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                data = tf.extractfile(m)
                assert data is not None
                with open(dest, "wb") as out:
                    shutil.copyfileobj(data, out, COPY_CHUNK)
                if progress:
                    progress(m.size)
    except (tarfile.TarError, EOFError, zstandard.ZstdError, gzip.BadGzipFile) as e:
        raise ArchiveError(f"{src}: not a readable archive ({type(e).__name__}: {e})") from None
    for rel, target in links:
        if (into / target).is_file() and not (into / rel).exists():
            (into / rel).parent.mkdir(parents=True, exist_ok=True)
            os.link(into / target, into / rel)
    return written


def _copy_dir(src: Path, into: Path, limit: int, progress: Callable[[int], None] | None) -> int:
    written = 0
    for path in sorted(src.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue                      # a layout's blobs are files; links are not followed
        written += path.stat().st_size
        if written > limit:
            raise ArchiveError(f"more than {limit} bytes to copy: not enough room")
        dest = into / path.relative_to(src)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        if progress:
            progress(path.stat().st_size)
    return written
