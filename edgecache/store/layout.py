"""Where everything lives under data_dir. Pure functions: no I/O here.

    data_dir/
      blobs/<algorithm>/<hex[:2]>/<hex>   content-addressed blobs, manifests included;
                                          one copy per digest, whatever the repository
      tmp/<token>.part                    fills in progress (cleared at start)
      quarantine/<algorithm>-<hex>.<n>    blobs that failed verification, kept for a look
      index/                              diskcache: blob sizes, last use, pins (LRU)
      links/                              diskcache: (upstream, repository) pairs each digest
                                          belongs to; answered only through those
      meta/                               diskcache: manifest media types, tag records,
                                          tag lists for offline answers
      sync/state.json                     what the syncer has fetched and pinned
      node-id                             this node's name among its siblings (made once)
      lock                                flock'd by the one process that owns the store
"""
from __future__ import annotations

from pathlib import Path

from edgecache.errors import InvalidDigest
from edgecache.reference import Digest, parse_digest


def blobs_dir(data_dir: Path) -> Path:
    return data_dir / "blobs"


def blob_path(data_dir: Path, digest: Digest) -> Path:
    # Two hex characters of fan-out keep directories small (256 of them).
    return blobs_dir(data_dir) / digest.algorithm / digest.hex[:2] / digest.hex


def digest_from_path(path: Path) -> Digest | None:
    """The inverse of blob_path for a file found on disk; None if it is not one of ours."""
    if path.parent.name != path.name[:2]:
        return None
    try:
        return parse_digest(f"{path.parent.parent.name}:{path.name}")
    except InvalidDigest:
        return None


def tmp_dir(data_dir: Path) -> Path:
    return data_dir / "tmp"


def tmp_path(data_dir: Path, token: str) -> Path:
    return tmp_dir(data_dir) / f"{token}.part"


def quarantine_path(data_dir: Path, digest: Digest, n: int) -> Path:
    return data_dir / "quarantine" / f"{digest.algorithm}-{digest.hex}.{n}"


def index_dir(data_dir: Path) -> Path:
    return data_dir / "index"


def links_dir(data_dir: Path) -> Path:
    return data_dir / "links"


def meta_dir(data_dir: Path) -> Path:
    return data_dir / "meta"


def lock_path(data_dir: Path) -> Path:
    return data_dir / "lock"


def node_id_path(data_dir: Path) -> Path:
    return data_dir / "node-id"
