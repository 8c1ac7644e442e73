"""Records about manifests and tags: what media type a cached manifest has,
which digest a tag pointed to and when the upstream last confirmed it, the
last whole tag list seen per repository (answered offline; the most recently
seen ones, up to limits.tag_lists_kept_bytes in all), the last referrers answer
per subject, and the referrers held here (manifests with a `subject`).

Held in memory (they are small: one record per manifest and tag) and mirrored
to diskcache, so they survive restarts and lookups never touch the disk.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgecache.store.diskmap import DiskMap


@dataclass(frozen=True)
class ManifestRecord:
    digest: str
    media_type: str
    size: int


@dataclass(frozen=True)
class TagRecord:
    digest: str
    media_type: str
    size: int
    checked: float        # wall-clock time the upstream last confirmed this answer


@dataclass(frozen=True)
class ReferrersRecord:
    digest: str           # of the answer (an image index), held in the store
    size: int
    checked: float        # wall-clock time the upstream last gave it
    etag: str | None      # the upstream's, for a conditional GET
    via: str              # "api" or "tags" (the referrers tag schema)


TagKey = tuple[str, str, str]     # (upstream, repository, tag)
SubjectKey = tuple[str, str, str]  # (upstream, repository, subject digest)
REFERRERS_HELD_PER_SUBJECT = 1024  # referrers remembered per subject (the newest win)

# Records of manifests no longer held (evicted) are dropped once there are more than
# this many, or twice as many as blobs held: a client asking for ever new manifests
# and tags does not grow the metadata without bound.
PRUNE_FLOOR = 20_000


class MetaStore:
    def __init__(self, directory: Path, *, tag_lists_bytes: int = 16 * 1024**2) -> None:
        self._disk = DiskMap(directory)
        self._tag_lists_cap = tag_lists_bytes
        self._tag_lists_bytes = 0
        self.flush_errors = 0              # kept by the runtime's flusher, shown in status
        self.last_flush_error: str | None = None
        self._manifests: dict[str, ManifestRecord] = {}
        # One record per Accept list: clients that accept different types get
        # different answers for the same tag (an index, or one platform's manifest).
        self._tags: dict[TagKey, dict[str, TagRecord]] = {}
        self._tag_records = 0
        self._prune_above = PRUNE_FLOOR     # raised after a prune that left many (all held)
        self._tag_lists: OrderedDict[tuple[str, str], bytes] = OrderedDict()   # oldest first
        self._referrers: dict[SubjectKey, ReferrersRecord] = {}
        # Referrer manifests held here, by subject: referrer digest -> its descriptor.
        self._held_referrers: dict[SubjectKey, dict[str, dict]] = {}
        self._held_count = 0

    def load(self) -> None:
        for key, value in self._disk.open():
            kind = key[0]
            if kind == "manifest":
                self._manifests[key[1]] = ManifestRecord(*value)
            elif kind == "tag":
                self._tags.setdefault(key[1:4], {})[key[4]] = TagRecord(*value)
                self._tag_records += 1
            elif kind == "taglist":
                self._tag_lists[key[1:3]] = value
                self._tag_lists_bytes += len(value)
            elif kind == "referrers":
                self._referrers[key[1:4]] = ReferrersRecord(*value)
            elif kind == "referrer":
                self._held_referrers.setdefault(key[1:4], {})[key[4]] = value
                self._held_count += 1
        self._trim_tag_lists()

    def flush(self) -> None:
        self._disk.flush()

    def close(self) -> None:
        self._disk.close()

    # -- manifests -------------------------------------------------------------

    def manifest(self, digest: str) -> ManifestRecord | None:
        return self._manifests.get(digest)

    def put_manifest(self, rec: ManifestRecord) -> None:
        if self._manifests.get(rec.digest) == rec:
            return
        self._manifests[rec.digest] = rec
        self._disk.put(("manifest", rec.digest), (rec.digest, rec.media_type, rec.size))

    def forget_manifest(self, digest: str) -> None:
        if self._manifests.pop(digest, None) is not None:
            self._disk.delete(("manifest", digest))

    # -- tags ------------------------------------------------------------------

    def tags(self, key: TagKey) -> dict[str, TagRecord]:
        """Records for a tag, by the Accept list (Accept.key()) they answered."""
        return self._tags.get(key, {})

    def put_tag(self, key: TagKey, accept_key: str, rec: TagRecord) -> None:
        records = self._tags.setdefault(key, {})
        self._tag_records += accept_key not in records
        records[accept_key] = rec
        self._disk.put(("tag", *key, accept_key),
                       (rec.digest, rec.media_type, rec.size, rec.checked))

    def all_tags(self) -> list[tuple[TagKey, dict[str, TagRecord]]]:
        return list(self._tags.items())

    # -- referrers -------------------------------------------------------------

    def referrers(self, key: SubjectKey) -> ReferrersRecord | None:
        return self._referrers.get(key)

    def put_referrers(self, key: SubjectKey, rec: ReferrersRecord) -> None:
        self._referrers[key] = rec
        self._disk.put(("referrers", *key), (rec.digest, rec.size, rec.checked, rec.etag, rec.via))

    def held_referrers(self, key: SubjectKey) -> list[dict]:
        """Descriptors of the referrers of a subject held here (oldest first)."""
        return list(self._held_referrers.get(key, {}).values())

    def put_held_referrer(self, key: SubjectKey, descriptor: dict) -> None:
        held = self._held_referrers.setdefault(key, {})
        digest = descriptor["digest"]
        if held.get(digest) == descriptor:
            return
        self._held_count += digest not in held
        held[digest] = descriptor
        self._disk.put(("referrer", *key, digest), descriptor)
        while len(held) > REFERRERS_HELD_PER_SUBJECT:
            old = next(iter(held))
            del held[old]
            self._held_count -= 1
            self._disk.delete(("referrer", *key, old))

    # -- bounds ----------------------------------------------------------------

    def needs_prune(self, held_count: int) -> bool:
        return self._records() > max(self._prune_above, 2 * held_count)

    def _records(self) -> int:
        return len(self._manifests) + self._tag_records + len(self._referrers) + self._held_count

    def prune(self, held: Callable[[str], bool]) -> int:
        """Drop the records of manifests not held, and the tag records naming them
        (answered by nothing here: the next request asks the upstream anyway)."""
        dropped = 0
        for digest in [d for d in self._manifests if not held(d)]:
            self.forget_manifest(digest)
            dropped += 1
        for key, records in list(self._tags.items()):
            for accept_key in [a for a, r in records.items() if not held(r.digest)]:
                del records[accept_key]
                self._tag_records -= 1
                self._disk.delete(("tag", *key, accept_key))
                dropped += 1
            if not records:
                del self._tags[key]
        for key, rec in [(k, r) for k, r in self._referrers.items() if not held(r.digest)]:
            del self._referrers[key]
            self._disk.delete(("referrers", *key))
            dropped += 1
        for key, descs in list(self._held_referrers.items()):
            for digest in [d for d in descs if not held(d)]:
                del descs[digest]
                self._held_count -= 1
                self._disk.delete(("referrer", *key, digest))
                dropped += 1
            if not descs:
                del self._held_referrers[key]
        # Not again before the records have doubled (many tags of few held manifests
        # would otherwise be walked every flush, dropping nothing).
        self._prune_above = max(PRUNE_FLOOR, 2 * self._records())
        return dropped

    # -- tag lists ---------------------------------------------------------------

    def tag_list(self, upstream: str, repo: str) -> bytes | None:
        return self._tag_lists.get((upstream, repo))

    def put_tag_list(self, upstream: str, repo: str, body: bytes) -> None:
        key = (upstream, repo)
        old = self._tag_lists.get(key)
        if old is not None:
            self._tag_lists.move_to_end(key)
            if old == body:
                return
            self._tag_lists_bytes -= len(old)
        self._tag_lists[key] = body
        self._tag_lists_bytes += len(body)
        self._disk.put(("taglist", upstream, repo), body)
        self._trim_tag_lists()

    def _trim_tag_lists(self) -> None:
        """The least recently seen lists go first, from memory and disk alike."""
        while self._tag_lists_bytes > self._tag_lists_cap and self._tag_lists:
            (upstream, repo), old = self._tag_lists.popitem(last=False)
            self._tag_lists_bytes -= len(old)
            self._disk.delete(("taglist", upstream, repo))

    @property
    def tag_lists_bytes(self) -> int:
        return self._tag_lists_bytes
