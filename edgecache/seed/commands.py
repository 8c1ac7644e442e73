"""`edgecache import` and `edgecache export`: through the daemon when one runs (the
archive is uploaded, the export downloaded: the daemon opens no path of ours), else
with the store opened here."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tarfile
import tempfile
import urllib.parse
from pathlib import Path

from edgecache.config import Config
from edgecache.daemon import Daemon
from edgecache.runtime import open_store, run_loop
from edgecache.seed.exporter import Exporter, open_compressed, pinned_set
from edgecache.seed.importer import Importer
from edgecache.store import layout
from edgecache.store.meta import MetaStore
from edgecache.sync.state import SyncState, state_path


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def _store_and_meta(cfg: Config):
    """The store and the metadata, for import and export without a daemon."""
    async with open_store(cfg) as store:
        meta = MetaStore(layout.meta_dir(cfg.data_dir),
                         tag_lists_bytes=cfg.limits.tag_lists_kept_bytes)
        await asyncio.to_thread(meta.load)
        try:
            yield store, meta
        finally:
            await asyncio.to_thread(meta.close)


def _seed_result(report: dict) -> int:
    """The report on stdout; exit 1 when anything was skipped or nothing done."""
    if "error" in report:
        print(f"edgecache: {report['error']}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 1 if report.get("skipped") or not report.get("images") else 0


@contextlib.contextmanager
def _as_archive(path: Path):
    """(a binary file, its size): the file itself, or a directory as a plain tar."""
    if not path.is_dir():
        with open(path, "rb") as f:
            yield f, os.fstat(f.fileno()).st_size
        return
    with tempfile.TemporaryFile() as f:
        with tarfile.open(fileobj=f, mode="w") as tf:
            tf.add(str(path), arcname=".")
        size = f.tell()
        f.seek(0)
        yield f, size


def cmd_import(cfg: Config, args: argparse.Namespace) -> int:
    """Archives into the store: through the daemon when one runs (it holds the store),
    else directly. Progress on stderr, the report as JSON on stdout."""
    paths = [str(Path(p).resolve()) for p in args.paths]
    if (daemon := Daemon.find(cfg, args.credentials_file)) is not None:
        # The daemon is sent the bytes (it opens no path of ours): a directory as a tar.
        report = {"images": [], "skipped": [], "new_blobs": 0, "new_bytes": 0}
        for path in paths:
            with _as_archive(Path(path)) as (f, size):
                query = urllib.parse.urlencode({"pin": "true" if args.pin else "false",
                                                "name": path})
                for line in daemon.upload(f"/_edgecache/import?{query}", f, size, args.timeout):
                    if "progress" in line:
                        print(line["progress"], file=sys.stderr, flush=True)
                    if "error" in line.get("report", {}):
                        report["error"] = line["report"]["error"]
                    for k, v in line.get("report", {}).items():
                        if k in ("images", "skipped"):
                            report[k] += v
                        elif k in ("new_blobs", "new_bytes"):
                            report[k] += v
    else:
        async def in_process() -> dict:
            async with _store_and_meta(cfg) as (store, meta):
                done = await Importer(store, meta, tuple(cfg.upstreams)).run(
                    [Path(p) for p in paths], pin=args.pin, progress=_say)
                return done.as_dict()
        report = run_loop(in_process())
    return _seed_result(report)


def cmd_export(cfg: Config, args: argparse.Namespace) -> int:
    """The pinned set into an OCI layout tarball, through the daemon when one runs."""
    out = str(args.out.resolve())
    if (daemon := Daemon.find(cfg, args.credentials_file)) is not None:
        # The daemon sends the tarball; this process writes OUT (compressed as named).
        part = Path(out).with_name(f".{Path(out).name}.part")
        try:
            with open_compressed(part) as sink:
                report = daemon.download("/_edgecache/export", sink, args.timeout)
            part.replace(out)
        finally:
            part.unlink(missing_ok=True)
        for name in report.get("images", []):
            print(f"{name}: exported", file=sys.stderr)
    else:
        async def in_process() -> dict:
            async with _store_and_meta(cfg) as (store, meta):
                path = state_path(cfg.data_dir)
                state = SyncState.from_json(path.read_text(), str(path)) \
                    if path.exists() else SyncState()
                done = await Exporter(store).run(pinned_set(state, store, meta), Path(out),
                                                 progress=_say)
                return done.as_dict()
        report = run_loop(in_process())
    return _seed_result(report)
