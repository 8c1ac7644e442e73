"""Command line: serve, check-config, gc, verify."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Coroutine

import yaml

from edgecache import __version__
from edgecache.config import Config, ConfigError, load
from edgecache.store.blobs import BlobStore


def _setup_logging(verbose: bool = False) -> None:
    root = logging.getLogger()
    if root.handlers:
        return
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(h)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # Access lines are JSON on stdout, one per request, for log shippers.
    access = logging.getLogger("edgecache.access")
    ah = logging.StreamHandler(sys.stdout)
    ah.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(ah)
    access.propagate = False
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _run(coro: Coroutine) -> object:
    """Run on uvloop: the server's loop everywhere, not only in `serve`."""
    import uvloop
    return uvloop.run(coro)


def _store(cfg: Config) -> BlobStore:
    return BlobStore(cfg.data_dir, cfg.cache.max_size, high_watermark=cfg.cache.high_watermark,
                     low_watermark=cfg.cache.low_watermark)


def cmd_serve(cfg: Config, args: argparse.Namespace) -> int:
    from edgecache.server.app import serve
    _run(serve(cfg))
    return 0


def cmd_check_config(cfg: Config, args: argparse.Namespace) -> int:
    print(f"# effective configuration from {cfg.source}")
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def cmd_gc(cfg: Config, args: argparse.Namespace) -> int:
    async def gc() -> tuple[int, int, dict]:
        store = _store(cfg)
        await store.open()
        try:
            n, freed = await store.gc()
            return n, freed, store.status()
        finally:
            await store.close()
    n, freed, st = _run(gc())
    print(json.dumps({"evicted": n, "freed_bytes": freed, **st}))
    return 0


def cmd_verify(cfg: Config, args: argparse.Namespace) -> int:
    async def verify():
        store = _store(cfg)
        await store.open()
        try:
            def progress(digest: str, ok: bool) -> None:
                if not ok:
                    print(f"BAD {digest}: quarantined", file=sys.stderr)
            return await store.verify(progress)
        finally:
            await store.close()
    report = _run(verify())
    print(json.dumps({"checked": report.checked, "bytes": report.bytes, "bad": report.bad}))
    return 1 if report.bad else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgecache", description="Edge pull-through cache for container images")
    p.add_argument("--version", action="version", version=f"edgecache {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--config", type=Path, default=None,
                        help="config file (default: /etc/edgecache/config.yaml if it exists, "
                             "else the embedded default)")
        sp.add_argument("-v", "--verbose", action="store_true")
        sp.set_defaults(fn=fn)
        return sp

    add("serve", cmd_serve, "run the cache")
    cc = add("check-config", cmd_check_config, "validate and print the effective configuration")
    cc.add_argument("file", type=Path, nargs="?", help="the file to check (same as --config)")
    add("gc", cmd_gc, "evict down to the budget now")
    add("verify", cmd_verify, "re-hash every blob, quarantine the bad ones")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    path = getattr(args, "file", None) or args.config
    try:
        cfg = load(path)
    except ConfigError as e:
        print(f"edgecache: {e}", file=sys.stderr)
        return 2
    _setup_logging(args.verbose)
    return args.fn(cfg, args)
