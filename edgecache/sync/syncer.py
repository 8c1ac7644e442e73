"""The syncer: keeps the pinned set and the prefetch lists fetched.

- Pinned images are pinned in the store (never evicted) under an owner of their
  own, `pinned:<entry>@<digest>`, from the moment their digests are known, so
  nothing is evicted mid-fetch. Blobs shared between images simply have several
  owners.
- A tracked tag is re-resolved with one HEAD per sync. When it moved, the new
  image is fetched completely before the tag switches (clients are answered from
  `pinned_tag`, not from the TTL path); the old image stays pinned for
  `sync.retention`, then becomes ordinary LRU content. A removed entry goes the
  same way.
- Prefetch entries are fetched the same way but not pinned.
- List files are watched (and reloaded on SIGHUP); a file that does not parse
  keeps its old entries.

What has been synced (digests, owners, retained pins) is kept in
data_dir/sync/state.json, written atomically (sync/state.py).

Longer than most modules on purpose: lists, runs, retention and tag switches all
change the same state and pins, which it alone owns (the state's shape is in
sync/state.py, fetching an image in sync/fetch.py).
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import time
from typing import Any

from edgecache.atomic import write_text_atomic
from edgecache.config import Config
from edgecache.cron import Cron, seconds_until_next
from edgecache.mediatypes import Accept
from edgecache.pull.blobs import BlobService
from edgecache.errors import PolicyDenied, UpstreamError, is_unavailable
from edgecache.policy.rules import Policy
from edgecache.pull.manifests import ManifestService
from edgecache.pull.referrers import ReferrersService
from edgecache.pull.routing import Route
from edgecache.reference import parse_digest
from edgecache.store.blobs import BlobStore
from edgecache.store.meta import MetaStore, TagRecord
from edgecache.sync import lists
from edgecache.sync.fetch import ANY, ImageFetcher, Progress
from edgecache.sync.lists import Entry, ListProblem
from edgecache.sync.state import KINDS, Retained, SyncedImage, SyncState, state_path
from edgecache.upstream.client import Upstreams

log = logging.getLogger("edgecache.sync")

ANY_KEY = Accept.parse([]).key()


def _owner(kind: str, entry: Entry, digest: str) -> str:
    return f"{kind}:{entry.key}@{digest}"


class Syncer:
    def __init__(self, cfg: Config, store: BlobStore, meta: MetaStore, upstreams: Upstreams,
                 manifests: ManifestService, blobs: BlobService, *,
                 pinned_tags: dict[tuple[str, str, str], str] | None = None,
                 referrers: ReferrersService | None = None, policy: Policy | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.meta = meta
        self.fetcher = ImageFetcher(manifests, blobs, upstreams, referrers,
                                    supply_chain_bytes=cfg.limits.supply_chain_bytes)
        self.policy = policy
        # The upstreams the process runs with: a reload that adds one needs a restart.
        self.upstream_names = tuple(upstreams.clients.keys())
        self.paths = {"pinned": cfg.pinned, "prefetch": cfg.prefetch}
        self.desired: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        self.problems: list[ListProblem] = []
        self.progress: dict[tuple[str, str], Progress] = {}
        self.state = SyncState()        # persisted in state.json
        # Pinned tracked tags -> the digest they answer with (shared with manifests).
        self._tags = pinned_tags if pinned_tags is not None else {}
        self._run: asyncio.Task[dict] | None = None
        self._run_keys: set[tuple[str, str]] | None = None
        self._tasks: list[asyncio.Task] = []
        self._signature: tuple = ()
        self._reload_wanted = asyncio.Event()
        self._save_lock = asyncio.Lock()
        self._reload_lock = asyncio.Lock()
        self.runs = 0
        self.last_run: dict[str, Any] | None = None
        # Pinned tags clients asked for: when the upstream was last asked where they
        # point, and the checks under way (pinned_tag_served).
        self._tag_checked: dict[tuple[str, str, str], float] = {}
        self._tag_checks: dict[tuple[str, str, str], asyncio.Task] = {}

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        await asyncio.to_thread(self._load_state)
        await self._release_orphaned_pins()
        await self.reload()
        for img in self.state.images["pinned"].values():
            if img.tag:
                self._refresh_tag(img.tag)

    async def _release_orphaned_pins(self) -> None:
        """Pins whose image state.json never recorded (a sync stopped mid-fetch, a
        damaged state file) would otherwise be held forever."""
        known = self.state.owners()
        orphans: dict[str, list[str]] = {}
        for digest, owners in self.store.index.pin_items():
            for o in owners:
                if o.startswith("pinned:") and o not in known:
                    orphans.setdefault(o, []).append(digest)
        for owner, digests in orphans.items():
            log.warning("releasing pins of an image no sync completed: %s", owner)
            await self.store.unpin_many(digests, owner)

    def start_background(self) -> None:
        """The daemon's loops: the schedule, the list watcher, retention expiry."""
        self._tasks = [asyncio.create_task(self._schedule_loop(), name="sync schedule"),
                       asyncio.create_task(self._watch_loop(), name="sync watch"),
                       asyncio.create_task(self._retention_loop(), name="sync retention")]

    async def close(self) -> None:
        checks = list(self._tag_checks.values())
        for t in [*self._tasks, *checks]:
            t.cancel()
        if self._run is not None:
            self._run.cancel()
        await asyncio.gather(*self._tasks, *checks, *([self._run] if self._run else []),
                             return_exceptions=True)

    def _load_state(self) -> None:
        path = state_path(self.cfg.data_dir)
        try:
            self.state = SyncState.from_json(path.read_text(), str(path))
        except FileNotFoundError:
            pass
        except ValueError:
            log.error("sync state %s is damaged; starting from an empty one",
                      state_path(self.cfg.data_dir))

    async def _save(self) -> None:
        # Serialised on the loop (the state is only changed there), written on a thread,
        # one write at a time.
        text = self.state.to_json()
        async with self._save_lock:
            await asyncio.to_thread(write_text_atomic, state_path(self.cfg.data_dir), text)

    # -- the lists ---------------------------------------------------------------

    def pinned_tag(self, key: tuple[str, str, str]) -> str | None:
        return self._tags.get(key)

    def pinned_tag_served(self, key: tuple[str, str, str]) -> None:
        """A client was answered a pinned tag (by the manifest service, from the pin).
        Once per tag_ttl the upstream is asked where the tag points now (a HEAD, in the
        background); moved, the entries tracking it sync at once instead of waiting for
        the schedule (the tag still switches only once the new image is complete)."""
        now = time.time()
        if key in self._tag_checks or now - self._tag_checked.get(key, 0.0) < self.cfg.tag_ttl:
            return
        entries = [e for e in self.desired["pinned"].values()
                   if e.track and (e.ref.upstream, e.ref.repo, e.ref.tag) == key]
        if not entries:
            return
        self._tag_checked[key] = now
        task = asyncio.create_task(self._check_tag(key, entries), name="pinned tag check")
        self._tag_checks[key] = task
        task.add_done_callback(lambda _: self._tag_checks.pop(key, None))

    async def _check_tag(self, key: tuple[str, str, str], entries: list[Entry]) -> None:
        try:
            digest = await self.fetcher.resolve(entries[0].ref)
        except Exception as e:   # noqa: BLE001 - the schedule's sync tries again anyway
            log.debug("pinned tag %s/%s:%s not checked: %s", *key, e)
            return
        if digest != self._tags.get(key):
            log.info("pinned tag %s/%s:%s moved to %s: syncing it now", *key, digest)
            self.sync({("pinned", e.key) for e in entries})

    def _list_signature(self) -> tuple:
        sig = []
        for kind in KINDS:
            path = self.paths[kind]
            if path is None:
                continue
            for f in lists.list_files(path) if path.exists() else [path]:
                try:
                    st = f.stat()
                    sig.append((str(f), st.st_mtime_ns, st.st_size))
                except OSError:
                    sig.append((str(f), None, None))
        return tuple(sig)

    async def reload(self) -> bool:
        """Read the list files again; True when the desired set changed."""
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> bool:
        self._signature = await asyncio.to_thread(self._list_signature)
        desired: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        problems: list[ListProblem] = []
        for kind in KINDS:
            path = self.paths[kind]
            if path is None:
                continue
            if not path.exists():
                problems.append(ListProblem(str(path), 1, "no such file or directory", True))
                desired[kind] = dict(self.desired[kind])       # keep what we had
                continue
            entries, ps = await asyncio.to_thread(lists.load, path, self.upstream_names)
            problems += ps
            broken = {p.file for p in ps if p.whole_file}
            for e in entries:
                desired[kind][e.key] = e
            # A file that does not parse keeps the entries it had.
            for key, e in self.desired[kind].items():
                if e.file in broken:
                    desired[kind].setdefault(key, e)
        for p in problems:
            log.error("list problem: %s", p)
        self.problems = problems
        changed = desired != self.desired
        self.desired = desired
        for kind in KINDS:
            for key in desired[kind]:
                self.progress.setdefault((kind, key), Progress())
            for key in [k for (kd, k) in self.progress if kd == kind and k not in desired[kind]]:
                del self.progress[(kind, key)]
        await self._drop_removed()
        return changed

    async def _drop_removed(self) -> None:
        """Entries gone from the lists: pins are retained, then released; tags unpinned."""
        now = time.time()
        dirty = False
        for kind in KINDS:
            images = self.state.images[kind]
            for key in [k for k in images if k not in self.desired[kind]]:
                img = images.pop(key)
                dirty = True
                if kind == "pinned":
                    self._retain(img.owner, img.pinned, now)
                    if img.tag:
                        self._refresh_tag(img.tag)
                log.info("%s entry %s removed from the list", kind, img.ref or key)
        if dirty:
            await self._save()

    def _retain(self, owner: str, digests: list[str], now: float) -> None:
        self.state.retained.append(Retained(owner, list(digests), now + self.cfg.sync.retention))

    async def expire_retained(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        keep, expired = [], []
        for r in self.state.retained:
            (expired if r.until <= now else keep).append(r)
        current = {img.owner for img in self.state.images["pinned"].values()}
        for r in expired:
            if r.owner not in current:             # the same image came back meanwhile
                await self.store.unpin_many(r.digests, r.owner)
        if expired:
            self.state.retained = keep
            await self._save()
        return len(expired)

    # -- syncing -----------------------------------------------------------------

    def sync(self, keys: set[tuple[str, str]] | None = None) -> asyncio.Task[dict]:
        """Start a sync (of everything, or of keys); one under way is joined when it
        covers what is asked, else the new one runs right after it."""
        current = self._run
        if current is None or current.done():
            self._run = asyncio.create_task(self._sync(keys), name="sync run")
        elif keys is None and self._run_keys is not None or (
                keys is not None and self._run_keys is not None and not keys <= self._run_keys):
            async def after() -> dict:
                await asyncio.wait([current])
                return await self._sync(keys)
            self._run = asyncio.create_task(after(), name="sync run (queued)")
        else:
            return current
        self._run_keys = keys
        return self._run

    async def _sync(self, keys: set[tuple[str, str]] | None) -> dict:
        self.runs += 1
        started = time.time()
        todo = [(kind, e) for kind in KINDS for key, e in self.desired[kind].items()
                if keys is None or (kind, key) in keys]
        for kind, e in todo:
            p = self.progress.setdefault((kind, e.key), Progress())
            p.state, p.reason = "pending", None
        gate = asyncio.Semaphore(self.cfg.sync.concurrency)

        async def one(kind: str, e: Entry) -> None:
            async with gate:
                await self._sync_one(kind, e)

        await asyncio.gather(*(one(k, e) for k, e in todo))
        finished = time.time()
        totals = self.totals()
        complete = [k for k in KINDS if totals[k]["complete"] == totals[k]["desired"]]
        for kind in complete:
            self.state.last_success[kind] = finished
        # Kept across restarts when there is something to keep (an empty list is
        # complete again at the first run after a start).
        if any(totals[k]["desired"] for k in complete):
            try:
                await self._save()
            except OSError as e:        # a full disk: said, and tried again next run
                log.warning("sync state not written: %s", e)
        self.last_run = {"started": started, "finished": finished, **totals}
        log.info("sync run %d: pinned %d/%d complete, prefetch %d/%d complete", self.runs,
                 totals["pinned"]["complete"], totals["pinned"]["desired"],
                 totals["prefetch"]["complete"], totals["prefetch"]["desired"])
        return self.last_run

    def interval(self) -> float:
        """Seconds between scheduled syncs: sync.interval, or the schedule's next gap."""
        if not self.cfg.sync.schedule:
            return self.cfg.sync.interval
        # The longest gap of the next firings, in local time as the schedule runs: a
        # weekday schedule's Friday-to-Monday gap counts.
        cron = Cron.parse(self.cfg.sync.schedule)
        t = cron.next_after(datetime.datetime.now().astimezone())
        gap = 0.0
        for _ in range(8):
            nxt = cron.next_after(t)
            gap, t = max(gap, (nxt - t).total_seconds()), nxt
        return gap

    async def _sync_one(self, kind: str, entry: Entry) -> None:
        p = self.progress.setdefault((kind, entry.key), Progress())
        p.state, p.reason, p.started, p.finished = "fetching", None, time.time(), None
        rec = self.state.images[kind].get(entry.key)
        planned: tuple[str, ...] = ()
        owner = None
        try:
            if entry.ref.digest:
                digest = entry.ref.digest
            elif entry.track or rec is None:
                digest = await self.fetcher.resolve(entry.ref)
            else:
                digest = rec.digest
            p.digest = digest
            if entry.ref.tag is not None:
                self._tag_checked[(entry.ref.upstream, entry.ref.repo, entry.ref.tag)] = time.time()
            owner = _owner(kind, entry, digest)
            linked_to = (entry.ref.upstream, entry.ref.repo)
            if rec and rec.digest == digest and all(
                    self.store.has(parse_digest(d)) and self.store.linked(d, linked_to)
                    for d in rec.digests):
                # Unchanged and whole: one HEAD (for a tracked tag), and its supply chain
                # asked again (signatures are often added after the image).
                p.bytes_total = p.bytes_done = rec.size
                try:
                    await self._refresh_supply(kind, entry, rec)
                except UpstreamError as e:
                    if not is_unavailable(e):
                        raise
                    # Offline (an entry by digest needs no HEAD): what it has stays pinned.
                    p.reason = f"supply chain not checked again: {e}"
                p.referrers = rec.referrers
                self._switch_tag(kind, entry, digest, rec.media_type)
                p.state, p.finished = "complete", time.time()
                return

            async def pin(digests: tuple[str, ...]) -> None:
                nonlocal planned
                planned = digests
                if kind == "pinned":
                    await self.store.pin_many(digests, owner)

            img = await self.fetcher.fetch(entry.ref, digest, entry.platforms, p, before_blobs=pin)
            supply = await self.fetcher.supply_chain(entry.ref, self._subjects(img.digests),
                                                     entry.referrers)
            await pin(tuple(dict.fromkeys([*img.digests, *supply.digests])))
            p.referrers = supply.artifacts
            await self._check_policy(entry, digest)
            if entry.key not in self.desired[kind]:
                # Removed from the list while it was fetched: retained like any removal.
                if kind == "pinned":
                    self._retain(owner, list(planned), time.time())
                    await self._save()
                return
            if rec and rec.owner != owner and kind == "pinned":
                self._retain(rec.owner, rec.pinned, time.time())
            elif rec and kind == "pinned":
                # The same image fetched again (something of it had gone): supply-chain
                # parts no longer there upstream are released.
                await self.store.unpin_many(set(rec.pinned) - set(planned), owner)
            self.state.images[kind][entry.key] = SyncedImage(
                digest=digest, digests=list(img.digests), owner=owner, ref=str(entry.ref),
                platforms=list(entry.platforms), media_type=img.media_type, size=img.size,
                tag=(entry.ref.upstream, entry.ref.repo, entry.ref.tag) if entry.ref.tag else None,
                synced=time.time(), supply=list(supply.digests), referrers=supply.artifacts)
            # Only now, with the new image and its supply chain complete, does the tag switch.
            self._switch_tag(kind, entry, digest, img.media_type)
            await self._save()
            p.state, p.finished = "complete", time.time()
            log.info("%s %s: %s complete (%d bytes, %d referrers)", kind, entry.ref, digest,
                     img.size, supply.artifacts)
        except Exception as e:   # noqa: BLE001 - one entry's failure must not stop the others
            p.state, p.reason, p.finished = "failed", f"{type(e).__name__}: {e}", time.time()
            log.warning("%s %s failed: %s", kind, entry.ref, p.reason)
            if kind == "pinned" and planned and owner and (rec is None or rec.owner != owner) \
                    and owner not in {r.owner for r in self.state.retained}:
                await self.store.unpin_many(planned, owner)

    def _subjects(self, digests: tuple[str, ...] | list[str]) -> list[str]:
        """An image's manifests (the index and its synced platforms): what referrers name."""
        return [d for d in digests if self.meta.manifest(d) is not None]

    async def _refresh_supply(self, kind: str, entry: Entry, rec: SyncedImage) -> None:
        """The supply chain of an unchanged image fetched again: new artifacts pinned
        under its owner, those gone from the upstream released."""
        supply = await self.fetcher.supply_chain(entry.ref, self._subjects(rec.digests),
                                                 entry.referrers)
        if list(supply.digests) == rec.supply and supply.artifacts == rec.referrers:
            return
        if kind == "pinned":
            await self.store.pin_many(supply.digests, rec.owner)
            gone = set(rec.supply) - set(supply.digests) - set(rec.digests)
            await self.store.unpin_many(gone, rec.owner)
        if supply.artifacts != rec.referrers:
            log.info("%s %s: %d referrers (was %d)", kind, entry.ref, supply.artifacts, rec.referrers)
        rec.supply, rec.referrers = list(supply.digests), supply.artifacts
        await self._save()

    async def _check_policy(self, entry: Entry, digest: str) -> None:
        """A tag never switches to an image an enforcing rule refuses (a warning rule's
        refusal is logged)."""
        if self.policy is None or not self.policy.active:
            return
        route = Route(entry.ref.upstream, entry.ref.repo)
        top = await self.fetcher.manifests.get(route, digest, ANY)
        for d in await self.policy.refusals(route, digest, top.body):
            if d.mode == "enforce":
                raise PolicyDenied(d.rule, digest, d.reason)
            log.warning("%s: policy rule %s (warn) would refuse %s: %s", entry.ref, d.rule,
                        digest, d.reason)

    def _switch_tag(self, kind: str, entry: Entry, digest: str, media_type: str) -> None:
        if entry.ref.tag is None:
            return
        key = (entry.ref.upstream, entry.ref.repo, entry.ref.tag)
        if kind == "pinned":
            self._refresh_tag(key)
        else:
            # Prefetched tags answer offline like any tag a client pulled.
            rec = self.meta.manifest(digest)
            self.meta.put_tag(key, ANY_KEY, TagRecord(digest, media_type, rec.size if rec else 0,
                                                      time.time()))

    def _refresh_tag(self, key: tuple[str, str, str]) -> None:
        """Point a pinned tag at a digest only when every pinned entry for it (one per
        platform set) is complete at that digest; forget it when no entry uses it."""
        entries = [e for e in self.desired["pinned"].values()
                   if (e.ref.upstream, e.ref.repo, e.ref.tag) == key]
        if not entries:
            self._tags.pop(key, None)
            return
        digests = {img.digest if (img := self.state.images["pinned"].get(e.key)) else None
                   for e in entries}
        if len(digests) == 1 and None not in digests:
            new = digests.pop()
            old = self._tags.get(key)
            if old != new:
                log.info("pinned tag %s/%s:%s now answers %s%s", *key, new,
                         f" (was {old})" if old else "")
            self._tags[key] = new
        # Otherwise some entry is not there yet: the tag keeps its current answer.

    # -- background loops ----------------------------------------------------------

    def request_reload(self) -> None:
        self._reload_wanted.set()

    async def _schedule_loop(self) -> None:
        cron = Cron.parse(self.cfg.sync.schedule) if self.cfg.sync.schedule else None
        first = True
        while True:
            if not first:
                await asyncio.sleep(seconds_until_next(cron, self.cfg.sync.interval))
            first = False                       # at start: a node after a power cut catches up
            try:
                await self.sync()
            except Exception:   # noqa: BLE001 - the schedule must outlive one bad run
                log.exception("sync run failed; the next one is on schedule")

    async def _watch_loop(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that
            # arrives as the event is set, and the loop then never ends (a hung shutdown).
            try:
                async with asyncio.timeout(self.cfg.sync.watch_interval):
                    await self._reload_wanted.wait()
            except TimeoutError:
                if await asyncio.to_thread(self._list_signature) == self._signature:
                    continue
            self._reload_wanted.clear()
            before = {(k, key) for k in KINDS for key in self.desired[k]}
            try:
                await self.reload()
            except Exception:   # noqa: BLE001 - the watcher must outlive a bad reload
                log.exception("reloading the lists failed; keeping the previous ones")
                continue
            new = {(k, key) for k in KINDS for key in self.desired[k]} - before
            log.info("lists reloaded: %d new entries", len(new))
            if new:
                if self._run is not None and not self._run.done():
                    await asyncio.shield(self._run)
                self.sync(new)

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, max(1.0, self.cfg.sync.retention / 4)))
            await self.expire_retained()

    # -- figures -----------------------------------------------------------------

    def totals(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kind in KINDS:
            states = [self.progress[(kind, k)].state for k in self.desired[kind]
                      if (kind, k) in self.progress]
            out[kind] = {"desired": len(self.desired[kind]),
                         "complete": states.count("complete"),
                         "failed": states.count("failed"),
                         "fetching": states.count("fetching"),
                         "pending": states.count("pending")}
        out["bytes_pinned"] = self.store.index.pinned_bytes
        return out

    def status(self) -> dict[str, Any]:
        entries = []
        for kind in KINDS:
            for key, e in self.desired[kind].items():
                p = self.progress.get((kind, key), Progress())
                entries.append({"kind": kind, "ref": str(e.ref), "platforms": list(e.platforms),
                                "track": e.track, "source": f"{e.file}:{e.line}",
                                "state": p.state, "digest": p.digest, "reason": p.reason,
                                "referrers_wanted": str(e.referrers), "referrers": p.referrers,
                                "bytes_done": p.live_bytes(), "bytes_total": p.bytes_total,
                                "started": p.started, "finished": p.finished})
        return {"running": self._run is not None and not self._run.done(), "runs": self.runs,
                "last_run": self.last_run, "totals": self.totals(), "entries": entries,
                "retained": len(self.state.retained),
                "problems": [str(p) for p in self.problems]}
