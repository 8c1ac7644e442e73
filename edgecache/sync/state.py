"""What the syncer has synced, kept in data_dir/sync/state.json (written atomically):
the image each pinned and prefetch entry last completed, and the pins of replaced
or removed images still retained. Typed here; the JSON keeps the layout it always
had (upgrade.py reads it too)."""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

log = logging.getLogger("edgecache.sync")

KINDS = ("pinned", "prefetch")
TagKey = tuple[str, str, str]          # (upstream, repository, tag)


def state_path(data_dir: Path) -> Path:
    return data_dir / "sync" / "state.json"


@dataclass
class SyncedImage:
    """The image an entry last completed."""

    digest: str
    digests: list[str]              # every digest of it: manifests, configs, layers
    owner: str                      # its pin owner (store): "<kind>:<entry>@<digest>"
    ref: str = ""
    platforms: list[str] = field(default_factory=list)
    media_type: str = ""
    size: int = 0
    tag: TagKey | None = None       # the tag it answers for, if the entry names one
    synced: float = 0.0
    # Its supply chain, pinned with it under the same owner and fetched again at each
    # sync: referrers and cosign tags (manifests, blobs) and the referrers answers.
    supply: list[str] = field(default_factory=list)
    referrers: int = 0              # artifacts among them (signatures, SBOMs, ...)

    @property
    def pinned(self) -> list[str]:
        """Everything pinned under its owner."""
        return list(dict.fromkeys([*self.digests, *self.supply]))


@dataclass
class Retained:
    """Pins of an image no entry wants any more, kept until `until`."""

    owner: str
    digests: list[str]
    until: float


def _known(cls: type, rec: dict) -> dict:
    """The keys of rec that cls has: a key written by another version (a downgrade)
    costs nothing, where a record skipped would cost its image's pins."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in rec.items() if k in names}


@dataclass
class SyncState:
    images: dict[str, dict[str, SyncedImage]] = field(
        default_factory=lambda: {k: {} for k in KINDS})    # kind -> entry key -> image
    retained: list[Retained] = field(default_factory=list)
    # kind -> when a sync last ended with every entry of that list complete
    last_success: dict[str, float] = field(default_factory=dict)

    def owners(self) -> set[str]:
        """Pin owners still in use: current images and retained ones."""
        return ({img.owner for img in self.images["pinned"].values()}
                | {r.owner for r in self.retained})

    def to_json(self) -> str:
        doc: dict[str, Any] = {kind: {key: {**asdict(img), "tag": list(img.tag) if img.tag else None}
                                      for key, img in self.images[kind].items()}
                               for kind in KINDS}
        doc["retained"] = [asdict(r) for r in self.retained]
        doc["last_success"] = dict(self.last_success)
        return json.dumps(doc, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "state.json") -> "SyncState":
        """Records that do not read (a damaged or much older file) are skipped, and
        said so: their images are fetched again."""
        doc = json.loads(text)
        state = cls()
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        for kind in KINDS:
            for key, rec in (doc.get(kind) or {}).items():
                try:
                    tag = rec.get("tag")
                    state.images[kind][key] = SyncedImage(**{
                        **_known(SyncedImage, rec), "tag": tuple(tag) if tag else None})
                except (TypeError, AttributeError) as e:
                    log.warning("%s: %s entry %s skipped (%s)", where, kind, key, e)
        last = doc.get("last_success")
        if isinstance(last, dict):
            state.last_success = {k: float(v) for k, v in last.items()
                                  if k in KINDS and isinstance(v, (int, float))}
        for rec in doc.get("retained") or []:
            try:
                state.retained.append(Retained(**_known(Retained, rec)))
            except (TypeError, AttributeError) as e:
                log.warning("%s: a retained image skipped (%s)", where, e)
        return state
