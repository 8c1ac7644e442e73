"""What a data_dir written by an earlier version needs at start.

Links (store/links.py) came after blobs: a store without them would answer
nothing that works offline today. They are derived from what was kept: every
tag record says its manifest belongs to (upstream, repository), and every
pinned, prefetched or retained image in sync/state.json lists what it is made
of under its route. Each manifest's tree (an index, its platform manifests, their
configs and layers) held here is linked to that route.

A digest found under a public and a private upstream alike is linked to the
private ones only: the earlier version did not know where it came from, and a
manifest anyone wrote on a public registry can name a private layer. A client
of the public route then costs the upstream two 64 KiB windows (pull/links.py),
which link it back.
"""
from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Collection, Mapping

from edgecache.config import UpstreamConfig
from edgecache.pull.links import children
from edgecache.reference import parse_digest
from edgecache.store.blobs import BlobStore
from edgecache.store.links import Owner
from edgecache.store.meta import MetaStore
from edgecache.sync.lists import parse_ref

log = logging.getLogger("edgecache.upgrade")

MAX_TREE = 256


async def derive_links(store: BlobStore, meta: MetaStore, sync_state: Path,
                       upstreams: Mapping[str, UpstreamConfig]) -> int:
    """Link what the previous version kept; returns the number of links made."""
    roots: dict[Owner, set[str]] = {}
    for (upstream, repo, _tag), records in meta.all_tags():
        for rec in records.values():
            roots.setdefault((upstream, repo), set()).add(rec.digest)
    for upstream, repo, digests in await asyncio.to_thread(_synced, sync_state, upstreams.keys()):
        roots.setdefault((upstream, repo), set()).update(digests)

    trees: dict[Owner, set[str]] = {}
    for own, digests in roots.items():
        if own[0] not in upstreams:
            continue                        # an upstream no longer configured
        trees[own] = await _tree(store, meta, digests)

    # Where each digest was found: public upstreams lose what private ones also have.
    private = {d for own, ds in trees.items() if not upstreams[own[0]].public for d in ds}
    made = 0
    for own, digests in trees.items():
        keep = digests if not upstreams[own[0]].public else digests - private
        made += store.links.add_many(keep, own)
    # Only now is the data_dir marked as having links: a start (or a `gc` without the
    # daemon) that stops before this point derives them again next time.
    store.links.mark_current()
    await store.flush()
    log.info("data_dir from an earlier version: %d repository links derived from %d tag and "
             "sync records", made, sum(len(v) for v in roots.values()))
    return made


async def _tree(store: BlobStore, meta: MetaStore, roots: set[str]) -> set[str]:
    """Every digest held here in the trees of these manifests (or blobs)."""
    found: set[str] = set()
    todo = list(roots)
    while todo and len(found) < MAX_TREE * max(1, len(roots)):
        d = todo.pop()
        if d in found:
            continue
        try:
            digest = parse_digest(d)
        except ValueError:
            continue
        if not store.has(digest):
            continue
        found.add(d)
        if meta.manifest(d) is not None:
            try:
                body = await store.read_bytes(digest)
            except OSError:
                continue
            todo += [c for c in children(body) if c not in found]
    return found


def _synced(path: Path, upstreams: Collection[str]) -> list[tuple[str, str, list[str]]]:
    """(upstream, repository, digests) of each image the syncer recorded, including
    the replaced ones it still retains (their owner names the entry)."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    out = []
    records = [rec for kind in ("pinned", "prefetch") for rec in (state.get(kind) or {}).values()]
    for rec in records + list(state.get("retained") or []):
        if not isinstance(rec, dict):
            continue
        ref = rec.get("ref")
        if not isinstance(ref, str) or not ref:
            # A retained image: its owner is "pinned:<ref>|<platforms>@<digest>".
            owner = rec.get("owner")
            ref = owner.partition(":")[2].partition("|")[0] if isinstance(owner, str) else None
        try:
            image = parse_ref(ref, upstreams) if ref else None
        except ValueError:
            image = None            # damaged, or an upstream no longer configured
        if image is not None:
            out.append((image.upstream, image.repo,
                        [d for d in rec.get("digests", []) if isinstance(d, str)]))
    return out
