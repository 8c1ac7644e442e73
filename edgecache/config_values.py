"""The values a config key can take: each parser turns one YAML value into its
typed form or raises ConfigError naming the key and the value; `setting` and
`section` attach a default and a parser to a config dataclass field (config.py)."""
from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import field
from typing import Any, Callable

from edgecache.cron import Cron
from edgecache.errors import ConfigError

_SIZE_UNITS = {
    "": 1, "B": 1,
    "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2, "G": 1000**3, "GB": 1000**3,
    "T": 1000**4, "TB": 1000**4,
    "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(key: str, value: Any) -> int:
    """`20GiB`, `500M`, `1T`, or a plain byte count."""
    if isinstance(value, bool):
        raise ConfigError(key, value, "expected a size such as 20GiB")
    if isinstance(value, int):
        n = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
        if not m or m.group(2).upper() not in _SIZE_UNITS:
            raise ConfigError(key, value, "expected a size such as 20GiB, 500M or a byte count")
        n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])
    if n <= 0:
        raise ConfigError(key, value, "must be positive")
    return n


def parse_duration(key: str, value: Any) -> float:
    """`60s`, `5m`, `6h`, `250ms`, `1d`, or a plain number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(key, value, "expected a duration such as 60s")
    if isinstance(value, (int, float)):
        secs = float(value)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", str(value))
        if not m:
            raise ConfigError(key, value, "expected a duration such as 60s, 5m or 6h")
        secs = float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    if secs < 0:
        raise ConfigError(key, value, "must not be negative")
    return secs


def format_size(n: int) -> str:
    """A size as people write it: the largest binary unit that divides it (`20GiB`)."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def format_duration(secs: float) -> str:
    """A duration as people write it: the largest unit that divides it (`60s` is `1m`),
    else seconds as written (`0.25s`)."""
    for unit, factor in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        if secs and secs == int(secs) and int(secs) % factor == 0:
            return f"{int(secs) // factor}{unit}"
    return f"{secs!r}s"            # exact: read back as the same float


def positive(key: str, value: Any) -> float:
    secs = parse_duration(key, value)
    if secs <= 0:
        raise ConfigError(key, value, "must be positive")
    return secs


def fraction(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(key, value, "expected a fraction in (0, 1]")
    return float(value)


def count(lo: int, hi: int) -> Callable[[str, Any], int]:
    def parse(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(key, value, f"expected a whole number from {lo} to {hi}")
        return value
    return parse


def at_least_one(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, value, "expected a whole number >= 1")
    return value


def flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, value, "expected true or false")
    return value


def strings(what: str) -> Callable[[str, Any], tuple[str, ...]]:
    def parse(key: str, value: Any) -> tuple[str, ...]:
        value = value or []
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(key, value, f"expected a list of {what}")
        return tuple(value)
    return parse


def networks(key: str, value: Any) -> tuple[str, ...]:
    nets = value or []
    if not isinstance(nets, list):
        raise ConfigError(key, nets, "expected a list of CIDRs")
    for n in nets:
        try:
            ipaddress.ip_network(str(n), strict=False)
        except ValueError:
            raise ConfigError(key, n, "not a CIDR such as 10.0.0.0/8") from None
    return tuple(str(n) for n in nets)


def peers(key: str, value: Any) -> tuple[str, ...]:
    peers = value or []
    if not isinstance(peers, list):
        raise ConfigError(key, peers, "expected a list of URLs such as http://10.0.0.2:5000")
    for p in peers:
        if not isinstance(p, str) or not re.fullmatch(r"https?://[^/\s]+", p.rstrip("/")):
            raise ConfigError(key, p, "expected a URL such as http://10.0.0.2:5000")
    return tuple(p.rstrip("/") for p in peers)


def node_id_text(key: str, value: Any) -> str:
    # 48: "edgecache-<id>" must fit one DNS label (63) in mDNS, with room to spare.
    if not (isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,48}", value)):
        raise ConfigError(key, value, "expected 1-48 letters, digits, '_' or '-'")
    return value


def schedule(key: str, value: Any) -> str:
    try:
        Cron.parse(str(value)).next_after(datetime.datetime.now())
    except ValueError as e:
        raise ConfigError(key, value, f"not a cron expression: {e}") from None
    return str(value)


def text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, "***" if "password" in key else value, "expected a string")
    return value


def realms(key: str, value: Any) -> tuple[str, ...]:
    realms = value or []
    if not isinstance(realms, list) or not all(
            isinstance(r, str) and re.fullmatch(r"https?://[^/\s]+(/\S*)?", r) for r in realms):
        raise ConfigError(key, realms,
                          "expected a list of token service URLs such as https://auth.example/token")
    return tuple(r.rstrip("/") for r in realms)


# How a field is read from YAML: its parser, and whether it names a path (resolved
# against the config file's directory) or a file that must exist (checked, and read
# where its contents are needed, by `read_files`: the one place that touches them).
PATH, FILE = "path", "file"


def setting(default: Any, parse: Callable[[str, Any], Any] | None = None, *, kind: str = "",
            repr: bool = True) -> Any:
    """A config key: its default and its parser, written once, next to its type."""
    if default is REQUIRED:
        return field(metadata={"parse": parse, "kind": kind}, repr=repr)
    return field(default=default, metadata={"parse": parse, "kind": kind}, repr=repr)


def section(cls: type, default: Any = None) -> Any:
    """A nested mapping, built by `_section` like the top level."""
    return field(default=default, metadata={"section": cls})


REQUIRED = object()
