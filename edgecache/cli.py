"""Command line: serve, check-config, gc, verify, sync, pin, prefetch, client-config."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Coroutine

import yaml

from edgecache.server.logsink import LineSink
from edgecache.units import human_size as size
from edgecache import __version__
from edgecache.atomic import write_text_atomic
from edgecache.config import Config, ConfigError, load
from edgecache.daemon import Daemon
from edgecache.runtime import open_store, run_loop
from edgecache.seed.commands import cmd_export, cmd_import
from edgecache.errors import DaemonError, ListError, StoreLocked
from edgecache.sync import listedit
from edgecache.sync.lists import list_files, parse_ref
from edgecache.sync.lists import load as load_list


def _setup_logging(verbose: bool = False) -> None:
    root = logging.getLogger()
    if root.handlers:
        return
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(h)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _access_log_sink() -> LineSink:
    """Access lines are JSON on stdout, one per request, for log shippers; written by a
    thread of their own (server/logsink.py)."""
    from edgecache.server.accesslog import access_line
    sink = LineSink(sys.stdout, render=access_line).start()
    sink.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("edgecache.access")
    access.addHandler(sink)
    access.propagate = False
    return sink


def _run(coro: Coroutine) -> object:
    return run_loop(coro)


def cmd_serve(cfg: Config, args: argparse.Namespace) -> int:
    from edgecache.memory import cap_malloc_arenas
    from edgecache.server.app import serve
    cap_malloc_arenas()              # before the first thread (the access log's writer)
    sink = _access_log_sink()
    try:
        _run(serve(cfg))
    finally:
        logging.getLogger("edgecache.access").removeHandler(sink)
        sink.close()                 # what is still pending is written first
    return 0


def cmd_check_config(cfg: Config, args: argparse.Namespace) -> int:
    from edgecache.clientconfig import warnings
    for w in warnings(cfg):
        print(f"warning: {w}", file=sys.stderr)
    print(f"# effective configuration from {cfg.source}")
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    # The lists it names: the daemon would start without them, and keep syncing nothing.
    bad = 0
    for key, path in () if args.skip_lists else (("pinned", cfg.pinned), ("prefetch", cfg.prefetch)):
        if path is None:
            continue
        if not path.exists():
            print(f"error: {key}: {path}: no such file or directory", file=sys.stderr)
            bad += 1
            continue
        entries, problems = load_list(path, cfg.upstreams.keys())
        for p in problems:
            print(f"error: {key}: {p}", file=sys.stderr)
        bad += len(problems)
        print(f"# {key}: {len(entries)} entries in {path}")
    return 1 if bad else 0


def _daemon(cfg: Config, args: argparse.Namespace) -> Daemon | None:
    return Daemon.find(cfg, getattr(args, "credentials_file", None))


def cmd_gc(cfg: Config, args: argparse.Namespace) -> int:
    if (daemon := _daemon(cfg, args)) is not None:
        out = daemon.call("POST", "/_edgecache/gc", args.timeout)
    else:
        async def gc() -> tuple[int, int, dict]:
            async with open_store(cfg) as store:
                n, freed = await store.gc()
                return n, freed, store.status()
        n, freed, st = _run(gc())
        out = {"evicted": n, "freed_bytes": freed, **st}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"evicted {out['evicted']:,} blobs, freed {size(out['freed_bytes'])}; "
              f"{size(out['bytes_used'])} used of {size(out['budget_bytes'])} "
              f"({out['blob_count']:,} blobs, {size(out['pinned_bytes'])} pinned)")
    return 0


def cmd_verify(cfg: Config, args: argparse.Namespace) -> int:
    if (daemon := _daemon(cfg, args)) is not None:
        out = daemon.call("POST", "/_edgecache/verify", args.timeout)
    else:
        async def verify():
            async with open_store(cfg) as store:
                return await store.verify()
        report = _run(verify())
        out = {"checked": report.checked, "bytes": report.bytes, "bad": report.bad}
    for digest in out["bad"]:
        print(f"BAD {digest}: quarantined", file=sys.stderr)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"checked {out['checked']:,} blobs ({size(out['bytes'])}): "
              + (f"{len(out['bad'])} bad, quarantined (fetched again when asked for)"
                 if out["bad"] else "all good"))
    return 1 if out["bad"] else 0


def cmd_status(cfg: Config, args: argparse.Namespace) -> int:
    daemon = _daemon(cfg, args)
    if daemon is None:
        print(f"edgecache status: no daemon answers for {cfg.source} "
              f"(listen {cfg.listen_host}:{cfg.listen_port}, data_dir {cfg.data_dir})",
              file=sys.stderr)
        return 1
    doc = daemon.call("GET", "/_edgecache/status", args.timeout)
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    print(summary(doc), end="")
    sync = doc["sync"]["totals"]
    down = [n for n, u in doc["upstreams"].items() if u["state"] != "up" or not u.get("answering", True)]
    return 2 if down or sync["pinned"]["failed"] else 0


def summary(doc: dict) -> str:
    """The daemon's status, as a person reads it."""
    ratio = doc.get("hit_ratio")
    out = [f"edgecache {doc['version']}, up {_ago(doc['uptime_s'])}, data in {doc['data_dir']}",
           f"store      {size(doc['bytes_used'])} of {size(doc['budget_bytes'])} "
           f"({doc['bytes_used'] / doc['budget_bytes']:.0%}), {doc['blob_count']:,} blobs, "
           f"{size(doc['pinned_bytes'])} pinned; hit ratio "
           f"{f'{ratio:.1%}' if ratio is not None else '-'}"
           + ("; DISK FULL" if doc["store"].get("disk_full") else "")]
    for i, (name, u) in enumerate(sorted(doc["upstreams"].items())):
        state = "failing" if u["state"] == "up" and not u.get("answering", True) else u["state"]
        why = f"  {u['last_error']}" if state != "up" and u.get("last_error") else ""
        out.append(f"{'upstreams' if i == 0 else '':10} {name:28} {state:8}{why[:100]}")
    t = doc["sync"]["totals"]
    last = (doc.get("sync_last_success") or {}).get("pinned")
    out.append(f"{'sync':10} pinned {t['pinned']['complete']}/{t['pinned']['desired']} complete"
               f" ({t['pinned']['failed']} failed), prefetch {t['prefetch']['complete']}/"
               f"{t['prefetch']['desired']}; pinned set last complete "
               + (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(last)) if last else "never"))
    for e in doc["sync"]["entries"]:
        if e["state"] == "failed":
            out.append(f"{'':10} failed: {e['kind']} {e['ref']}: {e['reason']}")
    sib = doc.get("siblings")
    if sib is not None:
        peers = sib.get("peers") or []
        out.append(f"{'siblings':10} {sib['live']} live of {len(peers)}"
                   + "".join(f"; {p['node_id'] or p['url']} {p['state']}" for p in peers[:8]))
    return "\n".join(out) + "\n"


def _ago(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min" if s < 172800 else f"{s // 86400} days"


class _Progress:
    """Per-image sync progress. On a terminal, a live table (one row per entry, as wide
    as the terminal, redrawn in place by rich) with log lines printed above it, never
    inside; otherwise a plain line per change of an entry's state."""

    def __init__(self, out=sys.stdout) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last: dict[str, tuple] = {}
        self._live = None
        self._streams: list[tuple[logging.StreamHandler, object]] = []

    def __enter__(self) -> "_Progress":
        if self.tty:
            from rich.console import Console
            from rich.live import Live
            both = sys.stderr.isatty()          # logs to a file stay in the file
            self._live = Live(console=Console(file=self.out), auto_refresh=False,
                              redirect_stdout=False, redirect_stderr=both, transient=False)
            self._live.start()
            # Log handlers hold the stderr they were made with: point them at rich's
            # proxy, which prints above the table.
            for h in logging.getLogger().handlers if both else []:
                if isinstance(h, logging.StreamHandler) and h.stream in (sys.__stderr__, sys.stderr):
                    self._streams.append((h, h.setStream(sys.stderr)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h, stream in self._streams:
            h.setStream(stream)
        if self._live is not None:
            self._live.stop()

    @staticmethod
    def _line(e: dict) -> str:
        mib = 1024 * 1024
        size = f"{e['bytes_done'] / mib:.1f}/{e['bytes_total'] / mib:.1f} MiB"
        why = f" ({e['reason']})" if e.get("reason") else ""
        refs = f" +{e['referrers']} referrers" if e.get("referrers") else ""
        return (f"{e['kind']:8} {e['state']:9} {size:>20}  {e['ref']} [{','.join(e['platforms'])}]"
                f"{refs}{why}")

    @staticmethod
    def _table(entries: list[dict], width: int):
        """One row per entry; the image named whole or cut in the middle (its tag stays
        visible), failures' reasons under the table where they have the width."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text
        t = Table(box=None, pad_edge=False, header_style="bold")
        for name, justify in (("list", "left"), ("state", "left"), ("MiB", "right"),
                              ("image", "left"), ("refs", "right")):
            t.add_column(name, justify=justify, no_wrap=True)
        style = {"complete": "green", "failed": "red", "fetching": "yellow"}
        mib = 1024 * 1024
        room = max(16, width - 38)
        for e in entries:
            t.add_row(e["kind"], Text(e["state"], style=style.get(e["state"], "")),
                      f"{e['bytes_done'] / mib:.1f}/{e['bytes_total'] / mib:.1f}",
                      Text(_middle(f"{e['ref']} [{','.join(e['platforms'])}]", room)),
                      str(e.get("referrers") or 0))
        failed = [Text(_middle(f"  {e['ref']}: {e['reason']}", width), style="red")
                  for e in entries if e["state"] == "failed" and e.get("reason")]
        return Group(t, *failed)

    def show(self, status: dict) -> None:
        entries = status["entries"]
        if self._live is not None:
            self._live.update(self._table(entries, self._live.console.width), refresh=True)
            return
        for e in entries:
            key = f"{e['kind']} {e['ref']} {e['platforms']}"
            now = (e["state"], e.get("reason"))
            if self.last.get(key) != now:
                self.last[key] = now
                self.out.write(self._line(e) + "\n")
        self.out.flush()


def _middle(text: str, n: int) -> str:
    """text in n characters at most: cut in the middle, where a long name repeats itself."""
    if len(text) <= n:
        return text
    head = (n - 1) // 3
    return text[:head] + "…" + text[len(text) - (n - 1 - head):]


def _sync_result(status: dict, pinned_source: Path | None) -> int:
    for p in status["problems"]:
        print(f"list problem: {p}", file=sys.stderr)
    pinned_problem = pinned_source is not None and any(
        p.startswith(str(pinned_source)) for p in status["problems"])
    t = status["totals"]
    print(f"pinned: {t['pinned']['complete']}/{t['pinned']['desired']} complete, "
          f"{t['pinned']['failed']} failed; prefetch: {t['prefetch']['complete']}/"
          f"{t['prefetch']['desired']}, {t['prefetch']['failed']} failed; "
          f"{size(t['bytes_pinned'])} pinned")
    return 1 if t["pinned"]["failed"] or pinned_problem else 0


def cmd_sync(cfg: Config, args: argparse.Namespace) -> int:
    daemon = _daemon(cfg, args)
    if daemon is not None:
        # A daemon owns this data_dir: ask it, and follow its progress.
        with _Progress() as progress:
            status = daemon.call("POST", "/_edgecache/sync", args.timeout)
            while True:
                progress.show(status)
                if not status["running"]:
                    break
                time.sleep(0.5)
                status = daemon.call("GET", "/_edgecache/sync", args.timeout)
        return _sync_result(status, cfg.pinned)

    async def in_process() -> dict:
        from edgecache.runtime import open_runtime
        with _Progress() as progress:
            async with open_runtime(cfg, siblings=False) as rt:
                run = rt.syncer.sync()
                while not run.done():
                    progress.show(rt.syncer.status())
                    await asyncio.wait([run], timeout=0.5)
                await run
                status = rt.syncer.status()
                progress.show(status)
                return status
    return _sync_result(_run(in_process()), cfg.pinned)


def _list_path(cfg: Config, kind: str) -> Path:
    path = cfg.pinned if kind == "pinned" else cfg.prefetch
    if path is None:
        raise SystemExit(f"edgecache: the configuration names no `{kind}:` list ({cfg.source})")
    if path.is_dir():
        files = list_files(path)
        return files[0] if files else path / f"{kind}.yaml"
    return path


def cmd_list_edit(cfg: Config, args: argparse.Namespace) -> int:
    kind = "pinned" if args.command == "pin" else "prefetch"
    path = _list_path(cfg, kind)
    ups = cfg.upstreams.keys()
    try:
        if args.action == "ls":
            source = cfg.pinned if kind == "pinned" else cfg.prefetch
            entries, problems = load_list(source, ups) if source.exists() else ([], [])
            for e in entries:
                print(f"{e.ref}\t{','.join(e.platforms)}\t{'track' if e.track else 'fixed'}\t{e.file}:{e.line}")
            for p in problems:
                print(f"problem: {p}", file=sys.stderr)
            return 1 if problems else 0
        if not args.images:
            raise SystemExit(f"edgecache {args.command} {args.action}: name at least one image")
        source = cfg.pinned if kind == "pinned" else cfg.prefetch
        files = list_files(source) if source.is_dir() else [path]
        for image in args.images:
            if args.action == "add":
                # A duplicate anywhere in the list (any file of a directory) is a no-op.
                ref = parse_ref(image, ups)
                listed = next((f for f in files if f.exists() and any(
                    e.ref == ref for e in load_list(f, ups)[0])), None)
                if listed is not None:
                    print(f"already listed: {image} ({listed})")
                    continue
                listedit.add(path, image, ups)
                print(f"added: {image} ({path})")
            else:
                n = sum(listedit.remove(f, image, ups) for f in files if f.exists())
                print(f"{'removed' if n else 'not listed'}: {image} ({source})")
                if not n:
                    return 1
    except (ValueError, ListError) as e:
        print(f"edgecache: {e}", file=sys.stderr)
        return 2
    return 0


def _client_credentials(path: Path | None) -> tuple[str, str] | None:
    """USER:PASSWORD or NAME:TOKEN from a file (the first line)."""
    if path is None:
        return None
    lines = path.read_text().strip().splitlines()
    user, sep, secret = lines[0].strip().partition(":") if lines else ("", "", "")
    if not sep or not user or not secret:
        raise ConfigError("--credentials-file", str(path), "expected USER:PASSWORD or NAME:TOKEN")
    return user, secret


def cmd_client_config(cfg: Config, args: argparse.Namespace) -> int:
    import socket
    from edgecache import clientconfig as cc
    endpoint = (args.endpoint or cc.default_endpoint(cfg, socket.gethostname())).rstrip("/")
    creds = _client_credentials(args.credentials_file)
    for w in cc.warnings(cfg, args.client):
        print(f"warning: {w}", file=sys.stderr)
    if creds is None and any(not u.public for u in cfg.upstreams.values()):
        print("note: this mirror has private upstreams: give the nodes credentials "
              "(--credentials-file NAME:TOKEN prints them)", file=sys.stderr)
    if creds is not None and args.client in ("containerd", "docker", "podman"):
        print(cc.containerd_auth(endpoint, creds) if args.client == "containerd"
              else cc.login(args.client, endpoint, creds), file=sys.stderr)
    if args.client == "containerd":
        files = cc.containerd(cfg, endpoint)
        if args.output:
            for name, text in files.items():
                d = args.output / name
                d.mkdir(parents=True, exist_ok=True)
                write_text_atomic(d / "hosts.toml", text)
                print(f"wrote {d / 'hosts.toml'}")
        else:
            for name, text in files.items():
                print(f"# --- certs.d/{name}/hosts.toml ---\n{text}")
        return 0
    if args.client == "k3s":
        text = cc.k3s(cfg, endpoint, wildcard=args.wildcard, credentials=creds)
    elif args.client == "docker":
        text, note = cc.docker(cfg, endpoint)
        print(f"note: {note}", file=sys.stderr)
    else:
        text = cc.podman(cfg, endpoint)
    if args.output:
        name = {"k3s": "registries.yaml", "docker": "daemon.json", "podman": "edgecache.conf"}[args.client]
        args.output.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.output / name, text)
        print(f"wrote {args.output / name}")
    else:
        print(text, end="")
    return 0


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
    ck = add("check-config", cmd_check_config, "validate and print the effective configuration")
    ck.add_argument("file", type=Path, nargs="?", help="the file to check (same as --config)")
    ck.add_argument("--skip-lists", action="store_true",
                    help="check the configuration alone, not the pinned and prefetch lists it "
                         "names (Ansible validates it before the lists are written)")
    for name, fn, help_, wait in (
            ("status", cmd_status, "the running daemon's state, as a summary (--json: all of it)", 30),
            ("gc", cmd_gc, "evict down to the budget now", 600),
            ("verify", cmd_verify, "re-hash every blob, quarantine the bad ones", 24 * 3600),
            ("sync", cmd_sync, "sync the pinned set and prefetch lists now (via the daemon if one runs)",
             30),
            ("import", cmd_import, "import image archives (OCI layout, docker-archive, K3s "
             "air-gap tarball; .tar, .tar.gz, .tar.zst)", 24 * 3600),
            ("export", cmd_export, "write the pinned set as an OCI layout tarball", 24 * 3600)):
        sp = add(name, fn, help_)
        sp.add_argument("--credentials-file", type=Path, default=None,
                        help="USER:PASSWORD or a token, sent to a daemon that wants credentials "
                             "(default: access.cli_credentials_file)")
        sp.add_argument("--timeout", type=float, default=wait,
                        help=f"seconds to wait for the daemon's answer (default: {wait})")
    for name in ("status", "gc", "verify"):
        sub.choices[name].add_argument("--json", action="store_true",
                                       help="print JSON (for scripts) instead of a summary")
    imp = sub.choices["import"]
    imp.add_argument("paths", nargs="+", type=Path, help="archives or OCI layout directories")
    imp.add_argument("--pin", action="store_true",
                     help="pin the images (never evicted); without: ordinary LRU content")
    exp = sub.choices["export"]
    exp.add_argument("--pinned", dest="out", type=Path, required=True, metavar="OUT",
                     help="the file to write (.tar, .tar.gz or .tar.zst)")
    cc = add("client-config", cmd_client_config, "print (or write) client configuration for this mirror")
    cc.add_argument("client", choices=("k3s", "containerd", "docker", "podman"))
    cc.add_argument("--endpoint", help="the mirror's URL as clients reach it (default: http://HOSTNAME:PORT)")
    cc.add_argument("--output", type=Path, help="write into this directory (containerd: DIR/<registry>/hosts.toml)")
    cc.add_argument("--wildcard", action="store_true", help='k3s: one "*" mirror entry for every registry')
    cc.add_argument("--credentials-file", type=Path, default=None,
                    help="USER:PASSWORD or NAME:TOKEN the nodes pull with (k3s: written into "
                         "registries.yaml; containerd, docker, podman: printed on stderr)")
    for name, what in (("pin", "the pinned list"), ("prefetch", "the prefetch list")):
        sp = add(name, cmd_list_edit, f"edit {what}")
        sp.add_argument("action", choices=("add", "rm", "ls"))
        sp.add_argument("images", nargs="*", help="references: registry/repo:tag or registry/repo@digest")
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
    try:
        return args.fn(cfg, args)
    except ConfigError as e:         # an argument that names a bad file (--credentials-file)
        print(f"edgecache: {e}", file=sys.stderr)
        return 2
    except StoreLocked as e:
        print(f"edgecache: {e}", file=sys.stderr)
        return 3
    except DaemonError as e:
        print(f"edgecache: {e}", file=sys.stderr)
        return 1
    except OSError as e:             # a path to read or write (import, export): no traceback
        print(f"edgecache: {e}", file=sys.stderr)
        return 1
