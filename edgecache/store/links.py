"""Repository links: which (upstream, repository) pairs each cached digest belongs to.

Blobs are kept once per digest, but a digest is only answered through a route it
is linked to, as Distribution links layers and manifest revisions into each
repository (`_layers/`, `_manifests/revisions/`): content that came through a
private upstream is never answered through a public one, nor one repository's
image under another's name.

Held in memory (a hit costs a dict and a set lookup) and mirrored to diskcache
under data_dir/links/; the store flushes it with the blob index, on the same
thread and before the index, so a blob whose record survived a crash has its
links too. Links of a digest go when its blob leaves the store; links to digests
that never arrived (a manifest names layers nobody pulled) are pruned when they
outnumber the stored ones.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from edgecache.store.diskmap import DiskMap

Owner = tuple[str, str]          # (upstream, repository)

# The on-disk format of the links; a data_dir without it was written before links
# existed and is upgraded at start (see pull/linkupgrade.py).
VERSION = 1
_VERSION_KEY = ("state", "version")
# Dangling links (to digests not stored) are pruned when there are more of them
# than this many, or than the stored digests.
PRUNE_FLOOR = 20_000
# Links an upstream's word alone made (a HEAD: a base layer asked under many
# repositories) that one digest keeps at most per upstream; the oldest of that
# upstream goes first and costs a question when asked again. One upstream's links
# never push out another's, nor links made by the content itself arriving.
MAX_VOUCHED = 64
# A safety valve for the rest, per digest and upstream (an upstream that serves one
# manifest under any repository name it is asked for).
MAX_FIRM = 1024


class Links:
    def __init__(self, directory: Path) -> None:
        self._disk = DiskMap(directory)
        # owner -> made by an upstream's word alone; insertion-ordered (oldest first).
        self._by_digest: dict[str, dict[Owner, bool]] = {}
        self.count = 0
        self.upgraded_from: int | None = None     # the version found at load, when older

    # -- lifecycle (blocking: the store runs these on its index thread) ----------

    def load(self) -> None:
        version = 0
        for key, value in self._disk.open():
            if key == _VERSION_KEY:
                version = int(value)
            elif key[0] == "link":
                _, upstream, repo, digest = key
                self._add_in_memory(digest, (upstream, repo), value == "vouched")
        if version < VERSION:
            self.upgraded_from = version

    def mark_current(self) -> None:
        """Record that the links are complete for this version (after an upgrade has
        derived them, or for a new data_dir); written with the next flush."""
        self.upgraded_from = None
        self._disk.put(_VERSION_KEY, VERSION)

    def flush(self) -> None:
        self._disk.flush()

    def close(self) -> None:
        self._disk.close()

    # -- queries ---------------------------------------------------------------

    def has(self, digest: str, owner: Owner) -> bool:
        owners = self._by_digest.get(digest)
        return owners is not None and owner in owners

    def owners(self, digest: str) -> frozenset[Owner]:
        return frozenset(self._by_digest.get(digest, ()))

    def digests(self) -> list[str]:
        return list(self._by_digest)

    # -- changes -----------------------------------------------------------------

    def add(self, digest: str, owner: Owner, *, vouched: bool = False) -> bool:
        """Link a digest to (upstream, repository); True when the link is new.
        `vouched`: made by the upstream's word alone (see MAX_VOUCHED)."""
        if not self._add_in_memory(digest, owner, vouched):
            return False
        self._disk.put(("link", owner[0], owner[1], digest), "vouched" if vouched else True)
        owners = self._by_digest[digest]
        same = [o for o, v in owners.items() if v == vouched and o[0] == owner[0]]
        if len(same) > (MAX_VOUCHED if vouched else MAX_FIRM):
            upstream, repo = oldest = same[0]
            del owners[oldest]
            self.count -= 1
            self._disk.delete(("link", upstream, repo, digest))
        return True

    def add_many(self, digests: Iterable[str], owner: Owner) -> int:
        return sum(self.add(d, owner) for d in digests)

    def drop(self, digest: str) -> None:
        """Forget every link of a digest (its blob left the store)."""
        owners = self._by_digest.pop(digest, None)
        if not owners:
            return
        self.count -= len(owners)
        for upstream, repo in owners:
            self._disk.delete(("link", upstream, repo, digest))

    def prune(self, stored: Callable[[str], bool], keep: Callable[[str], bool]) -> int:
        """Drop the links of digests neither stored nor kept (pinned, filling)."""
        gone = [d for d in self._by_digest if not stored(d) and not keep(d)]
        for d in gone:
            self.drop(d)
        return len(gone)

    def needs_prune(self, stored_count: int) -> bool:
        return len(self._by_digest) > max(PRUNE_FLOOR, 2 * stored_count)

    def _add_in_memory(self, digest: str, owner: Owner, vouched: bool) -> bool:
        owners = self._by_digest.get(digest)
        if owners is None:
            self._by_digest[digest] = {owner: vouched}
        elif owner in owners:
            if owners[owner] and not vouched:
                owners[owner] = False       # the content itself came: a firm link now
                self._disk.put(("link", owner[0], owner[1], digest), True)
            return False
        else:
            owners[owner] = vouched
        self.count += 1
        return True
