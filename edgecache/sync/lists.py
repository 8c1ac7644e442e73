"""Image list files (pinned and prefetch), as people and Ansible templates write them.

    referrers: [signatures, attestations]   # what each entry brings along (this is the default)
    images:
      - registry.corp.example/pos/backend@sha256:3f1c...   # a plain reference
      - ref: registry.corp.example/pos/frontend:2.4         # or a mapping
        platforms: [linux/arm64]    # default: the platform of this machine
        track: true                 # re-resolve the tag at each sync; default true for tags
        referrers: all              # all | none | [signatures, attestations, sboms, <artifactType>...]

A file that does not parse, or an entry that is not valid, is reported with
file, line and reason; the other entries still count.
"""
from __future__ import annotations

import platform as _platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection

import yaml

from edgecache.artifacts import DEFAULT as DEFAULT_REFERRERS, Selection, parse_selection
from edgecache.config import normalize_registry
from edgecache.reference import parse_digest, validate_name, validate_tag
from edgecache.yamlerror import duplicate_key, where_and_why

_PLATFORM = re.compile(r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?")


def this_platform() -> str:
    """The platform of this machine, in OCI terms (linux/amd64, linux/arm64, linux/arm/v7)."""
    m = _platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
            "armv7l": "arm/v7", "armv6l": "arm/v6", "i686": "386", "i386": "386",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(m, m)
    return f"linux/{arch}"


@dataclass(frozen=True)
class ListProblem:
    file: str
    line: int
    reason: str
    whole_file: bool = False     # the file could not be read or parsed: none of it counts

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class ImageRef:
    upstream: str               # the key in `upstreams:`
    repo: str
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        at = f"@{self.digest}" if self.digest else f":{self.tag}"
        return f"{self.upstream}/{self.repo}{at}"


@dataclass(frozen=True)
class Entry:
    ref: ImageRef
    platforms: tuple[str, ...]
    track: bool
    file: str = field(compare=False)
    line: int = field(compare=False)
    referrers: Selection = DEFAULT_REFERRERS   # signatures, SBOMs... fetched and pinned with it

    @property
    def key(self) -> str:
        """Identity across reloads: the reference and the platforms."""
        return f"{self.ref}|{','.join(self.platforms)}"


def parse_ref(text: str, upstreams: Collection[str] | None = None) -> ImageRef:
    """`registry/repo:tag` or `registry/repo@sha256:...`; the registry is an upstream key."""
    text = text.strip()
    name, digest, tag = text, None, None
    if "@" in name:
        name, _, digest = name.partition("@")
        parse_digest(digest)
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = name.rpartition(":")
        validate_tag(tag)
    if digest is None and tag is None:
        tag = "latest"
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"
                or (upstreams is not None and normalize_registry(first) in upstreams)):
        registry, repo = normalize_registry(first), rest
    else:
        registry, repo = "docker.io", name          # a Docker Hub short name
    if registry == "docker.io" and "/" not in repo:
        repo = f"library/{repo}"
    validate_name(repo)
    if upstreams is not None and registry not in upstreams:
        raise ValueError(f"registry {registry} is not one of the configured upstreams")
    return ImageRef(registry, repo, tag if digest is None else None, digest)


def _scalar(node: yaml.Node) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) else None


def parse_text(text: str, file: str, upstreams: Collection[str] | None = None,
               default_platform: str | None = None) -> tuple[list[Entry], list[ListProblem]]:
    """Entries and problems of one list file's text. A YAML error is one problem, no entries."""
    default_platform = default_platform or this_platform()
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        line, why = where_and_why(e)
        return [], [ListProblem(file, line, f"does not parse: {why}", True)]
    if root is None:
        return [], []
    if not isinstance(root, yaml.MappingNode):
        return [], [ListProblem(file, root.start_mark.line + 1, "expected a mapping with `images:`",
                                True)]
    items: yaml.Node | None = None
    problems: list[ListProblem] = []
    referrers = DEFAULT_REFERRERS
    dup = duplicate_key(root)
    if dup is not None:
        problems.append(ListProblem(file, dup.start_mark.line + 1, f"duplicate key {dup.value!r}"))
    for k, v in root.value:
        if _scalar(k) == "images":
            items = v
        elif _scalar(k) == "referrers":
            try:
                referrers = parse_selection(yaml.safe_load(yaml.serialize(v)))
            except ValueError as e:
                problems.append(ListProblem(file, k.start_mark.line + 1, str(e)))
        else:
            problems.append(ListProblem(file, k.start_mark.line + 1, f"unknown key {_scalar(k)!r}"))
    if items is None or (isinstance(items, yaml.ScalarNode) and items.value in ("", "null", "~")):
        return [], problems
    if not isinstance(items, yaml.SequenceNode):
        return [], problems + [ListProblem(file, items.start_mark.line + 1, "`images:` must be a list", True)]
    entries: list[Entry] = []
    seen: set[str] = set()
    for item in items.value:
        line = item.start_mark.line + 1
        try:
            entry = _entry(item, file, line, upstreams, default_platform, referrers)
        except Exception as e:   # noqa: BLE001 - any odd entry is a problem to report, not a crash
            problems.append(ListProblem(file, line, str(e) or type(e).__name__))
            continue
        if entry.key in seen:
            problems.append(ListProblem(file, line, f"duplicate entry {entry.ref}"))
            continue
        seen.add(entry.key)
        entries.append(entry)
    return entries, problems


def _entry(item: yaml.Node, file: str, line: int, upstreams: Collection[str] | None,
           default_platform: str, referrers: Selection = DEFAULT_REFERRERS) -> Entry:
    if isinstance(item, yaml.ScalarNode):
        ref = parse_ref(item.value, upstreams)
        return Entry(ref, (default_platform,), ref.tag is not None, file, line, referrers)
    if not isinstance(item, yaml.MappingNode):
        raise ValueError("an entry is a reference or a mapping with `ref:`")
    dup = duplicate_key(item)
    if dup is not None:
        raise ValueError(f"duplicate key {dup.value!r}")
    fields = {str(_scalar(k)): v for k, v in item.value}
    unknown = set(fields) - {"ref", "platforms", "track", "referrers"}
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r}")
    if "ref" not in fields or _scalar(fields["ref"]) is None:
        raise ValueError("a mapping entry needs `ref:`")
    ref = parse_ref(_scalar(fields["ref"]) or "", upstreams)
    platforms: tuple[str, ...] = (default_platform,)
    if "platforms" in fields:
        node = fields["platforms"]
        values = [_scalar(n) for n in node.value] if isinstance(node, yaml.SequenceNode) else [_scalar(node)]
        if not values or any(v is None or not _PLATFORM.fullmatch(v) for v in values):
            raise ValueError("platforms: expected a list such as [linux/amd64, linux/arm64]")
        platforms = tuple(dict.fromkeys(v for v in values if v))
    track = ref.tag is not None
    if "track" in fields:
        v = _scalar(fields["track"])
        if v not in ("true", "false"):
            raise ValueError("track: expected true or false")
        track = v == "true"
        if track and ref.tag is None:
            raise ValueError("track: a reference by digest cannot be tracked")
    if "referrers" in fields:
        referrers = parse_selection(yaml.safe_load(yaml.serialize(fields["referrers"])))
    return Entry(ref, platforms, track, file, line, referrers)


def list_files(path: Path) -> list[Path]:
    """A list is a file, or a directory of *.yaml / *.yml files (sorted)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    return [path]


def load(path: Path, upstreams: Collection[str] | None = None,
         default_platform: str | None = None) -> tuple[list[Entry], list[ListProblem]]:
    entries: list[Entry] = []
    problems: list[ListProblem] = []
    seen: set[str] = set()
    for f in list_files(path):
        try:
            text = f.read_text(encoding="utf-8")
        except OSError as e:
            problems.append(ListProblem(str(f), 1, f"cannot read: {e.strerror}", True))
            continue
        except UnicodeDecodeError as e:
            problems.append(ListProblem(str(f), 1, f"not UTF-8 (byte {e.start})", True))
            continue
        es, ps = parse_text(text, str(f), upstreams, default_platform)
        problems += ps
        for e in es:
            if e.key not in seen:
                seen.add(e.key)
                entries.append(e)
    return entries, problems
