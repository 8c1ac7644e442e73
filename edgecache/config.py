"""Typed, frozen configuration: loaded and validated once at start.

Every error names the key and the offending value, so a bad config fails with
one line. The environment (uid, XDG dirs) is passed in, never read globally by
callers, so tests can build configs without touching the machine.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from edgecache.credentials import read_tokens
from edgecache.cron import Cron
from edgecache.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/edgecache/config.yaml")

# The embedded default: a useful mirror for the public registries on port 5000.
DEFAULT_YAML = """\
listen: 0.0.0.0:5000
cache:
  max_size: 20GiB
upstreams:
  docker.io:
    url: https://registry-1.docker.io
  ghcr.io:
    url: https://ghcr.io
  quay.io:
    url: https://quay.io
  registry.k8s.io:
    url: https://registry.k8s.io
  gcr.io:
    url: https://gcr.io
default_upstream: docker.io
tag_ttl: 60s
upstream_timeout: {connect: 3s, read: 30s}
"""

# Docker Hub answers to several names; all of them mean the key "docker.io".
DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")


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


@dataclass(frozen=True)
class TLSConfig:
    ca_file: Path | None = None
    insecure_skip_verify: bool = False


@dataclass(frozen=True)
class UpstreamConfig:
    name: str                     # the registry host as clients name it
    url: str                      # where to dial it
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TLSConfig = TLSConfig()
    # Served to anonymous clients? An upstream with credentials is not, unless it says so.
    public: bool = True
    # Token services on other hosts that may see the credentials (the upstream's own
    # host always may); any other realm is asked without them.
    token_realms: tuple[str, ...] = ()


@dataclass(frozen=True)
class Timeouts:
    connect: float = 3.0
    read: float = 30.0


@dataclass(frozen=True)
class CacheConfig:
    max_size: int = 20 * 1024**3
    high_watermark: float = 0.95  # start evicting above this fraction of max_size
    low_watermark: float = 0.85   # ... and stop below this one
    scrub_interval: float = 24 * 3600.0   # re-hash every blob this often (0: never)
    scrub_rate: int = 64 * 1024**2        # bytes per second the scrub may read
    evict_interval: float = 30.0          # how often the budget is checked besides commits
    abandon_after: float = 10.0           # a fill nobody waits for is cancelled after this...
    finish_fraction: float = 0.5          # ... unless it is this far along (or sync work)


@dataclass(frozen=True)
class LimitsConfig:
    """Caps on what an upstream (or a client through it) can make the cache hold."""

    manifest_bytes: int = 4 * 1024**2
    tag_list_bytes: int = 1024**2          # one tag list page from the upstream
    tag_list_tags: int = 10_000            # tags in one page (the `n` asked of the upstream)
    tag_lists_kept_bytes: int = 16 * 1024**2   # last full lists kept for offline answers
    token_bytes: int = 64 * 1024           # a token service's answer


@dataclass(frozen=True)
class ServerConfig:
    header_timeout: float = 10.0      # a request head must arrive whole within this
    idle_timeout: float = 75.0        # an idle keep-alive connection is closed after this


@dataclass(frozen=True)
class BreakerConfig:
    failures: int = 3             # consecutive connection failures that open it
    backoff: float = 5.0          # first open period; doubles up to max_backoff
    max_backoff: float = 60.0


@dataclass(frozen=True)
class AccessConfig:
    networks: tuple[str, ...] = ()      # allowed client CIDRs; empty: any
    htpasswd: Path | None = None        # bcrypt Basic credentials
    tokens_file: Path | None = None     # static bearer tokens, one per line (NAME:TOKEN or TOKEN)
    admin: tuple[str, ...] = ()         # who may POST gc/verify/sync; empty: anyone authenticated
    cli_credentials_file: Path | None = None   # USER:PASSWORD or a TOKEN the CLI sends the daemon
    password_checks: int = 2            # bcrypt checks run at once (their own threads)


@dataclass(frozen=True)
class ListenerTLS:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None  # mutual TLS: a verified client certificate authenticates
    require_client_cert: bool = False


@dataclass(frozen=True)
class SyncConfig:
    schedule: str | None = None     # 5-field cron; when set it wins over interval
    interval: float = 6 * 3600.0
    concurrency: int = 4            # images fetched at once
    retention: float = 24 * 3600.0  # how long a replaced or removed pinned image stays pinned
    watch_interval: float = 2.0     # how often list files are checked for edits


@dataclass(frozen=True)
class SiblingTLS:
    ca_file: Path | None = None             # the CA siblings' certificates chain to (else the system's)
    cert_file: Path | None = None           # our client certificate, for listeners that want one
    key_file: Path | None = None


@dataclass(frozen=True)
class SiblingsConfig:
    """Other edgecaches on the branch LAN, asked for content by digest before the WAN."""

    enabled: bool = False
    mdns: bool = True                       # advertise and browse _edgecache._tcp.local.
    interfaces: tuple[str, ...] = ()        # names or addresses mDNS uses; empty: all
    peers: tuple[str, ...] = ()             # static base URLs (other VLANs, no multicast)
    secret: bytes | None = field(default=None, repr=False)   # HMAC key for hop requests
    secret_file: Path | None = None
    node_id: str | None = None              # default: generated once, kept in data_dir
    timeout: float = 2.0                    # connect + response headers from a sibling
    read_timeout: float = 5.0               # longest silence inside a sibling's body
    health_interval: float = 5.0
    fail_after: int = 3                     # failed checks that drop a sibling
    readmit_after: int = 2                  # good checks that bring it back
    bad_for: float = 600.0                  # how long a sibling that sent wrong bytes is shunned
    min_rate: int = 512 * 1024              # bytes/s below which a sibling's body is given up
    tls: "SiblingTLS | None" = None         # for https siblings: whom to trust, what to present


@dataclass(frozen=True)
class Config:
    listen_host: str
    listen_port: int
    data_dir: Path
    cache: CacheConfig
    upstreams: Mapping[str, UpstreamConfig]
    default_upstream: str | None
    tag_ttl: float
    upstream_timeout: Timeouts
    breaker: BreakerConfig
    source: str                   # where it came from: a path or "<embedded default>"
    pinned: Path | None = None    # a list file or a directory of them
    prefetch: Path | None = None
    sync: SyncConfig = SyncConfig()
    access: AccessConfig = AccessConfig()
    tls: ListenerTLS | None = None
    siblings: SiblingsConfig = SiblingsConfig()
    limits: LimitsConfig = LimitsConfig()
    server: ServerConfig = ServerConfig()

    def to_dict(self) -> dict[str, Any]:
        """The effective configuration, secrets masked (for check-config): derived
        from the dataclasses, so a key added to them is printed too."""
        doc: dict[str, Any] = {"listen": f"{self.listen_host}:{self.listen_port}"}
        for f in fields(self):
            if f.name not in ("listen_host", "listen_port", "source"):
                doc[f.name] = _plain(getattr(self, f.name))
        for u in doc["upstreams"].values():
            del u["name"]                         # it is the key
        if not self.siblings.enabled:
            doc["siblings"] = None
        else:
            del doc["siblings"]["enabled"], doc["siblings"]["secret"]   # secret_file says it
        return doc


def _plain(value: Any) -> Any:
    """A config value as YAML prints it: fields hidden from repr (passwords, secrets)
    masked, paths as strings, tuples as lists."""
    if is_dataclass(value):
        return {f.name: ("***" if getattr(value, f.name) else None) if not f.repr
                else _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def normalize_registry(name: str) -> str:
    """Map Docker Hub's aliases to one key; other hosts are lower-cased."""
    name = name.strip().lower()
    return "docker.io" if name in DOCKER_HUB_ALIASES else name


def default_data_dir(env: Mapping[str, str], uid: int) -> Path:
    if env.get("STATE_DIRECTORY"):
        # Under systemd with StateDirectory=: the directory it made for us.
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if uid == 0:
        return Path("/var/lib/edgecache")
    xdg = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME", "/tmp"), ".cache")
    return Path(xdg) / "edgecache"


def _mapping(key: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(key, value, "expected a mapping")
    return value


def _reject_unknown(key: str, raw: Mapping[str, Any], known: set[str]) -> None:
    for k in raw:
        if k not in known:
            raise ConfigError(f"{key}.{k}" if key else str(k), raw[k], "unknown key")


def _listen(value: Any) -> tuple[str, int]:
    m = re.fullmatch(r"\[?([^\]]*?)\]?:(\d{1,5})", str(value))
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ConfigError("listen", value, "expected HOST:PORT, e.g. 0.0.0.0:5000")
    return m.group(1) or "0.0.0.0", int(m.group(2))


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, value, "expected true or false")
    return value


def _upstream(name: str, raw: Any, base: Path) -> UpstreamConfig:
    key = f"upstreams.{name}"
    raw = _mapping(key, raw)
    _reject_unknown(key, raw, {"url", "username", "password", "password_file", "tls", "public",
                               "token_realms"})
    url = raw.get("url")
    if not isinstance(url, str) or not re.fullmatch(r"https?://[^/\s]+(/.*)?", url):
        raise ConfigError(f"{key}.url", url, "expected an http:// or https:// URL")
    if "@" in url.split("://", 1)[1].split("/", 1)[0]:
        # Credentials in the URL would be shown wherever the URL is (status, logs,
        # check-config) and would not make the upstream private.
        raise ConfigError(f"{key}.url", re.sub(r"//[^/@]*@", "//***@", url),
                          "credentials do not go in the URL: use username and password_file")
    realms = raw.get("token_realms") or []
    if not isinstance(realms, list) or not all(
            isinstance(r, str) and re.fullmatch(r"https?://[^/\s]+(/\S*)?", r) for r in realms):
        raise ConfigError(f"{key}.token_realms", realms,
                          "expected a list of token service URLs such as https://auth.example/token")
    password = raw.get("password")
    if "password_file" in raw:
        pf = base / str(raw["password_file"])
        try:
            password = pf.read_text().strip()
        except OSError as e:
            raise ConfigError(f"{key}.password_file", str(pf), f"cannot read: {e.strerror}") from None
    if password is not None and not isinstance(password, str):
        raise ConfigError(f"{key}.password", "***", "expected a string")
    username = raw.get("username")
    if username is not None and not isinstance(username, str):
        raise ConfigError(f"{key}.username", username, "expected a string")
    if (username is None) != (password is None):
        raise ConfigError(f"{key}.username", username, "username and password go together")
    tls_raw = _mapping(f"{key}.tls", raw.get("tls"))
    _reject_unknown(f"{key}.tls", tls_raw, {"ca_file", "insecure_skip_verify"})
    ca = tls_raw.get("ca_file")
    if ca is not None and not (base / str(ca)).is_file():
        raise ConfigError(f"{key}.tls.ca_file", ca, "no such file")
    tls = TLSConfig(ca_file=base / str(ca) if ca else None,
                    insecure_skip_verify=_bool(f"{key}.tls.insecure_skip_verify",
                                               tls_raw.get("insecure_skip_verify", False)))
    public = _bool(f"{key}.public", raw.get("public", username is None))
    if url.rstrip("/") == "https://registry-1.docker.io" and "token_realms" not in raw:
        realms = ["https://auth.docker.io/token"]    # Docker Hub's token service
    return UpstreamConfig(name=name, url=url.rstrip("/"), username=username,
                          password=password, tls=tls, public=public,
                          token_realms=tuple(r.rstrip("/") for r in realms))


def build(raw: Any, *, source: str, env: Mapping[str, str], uid: int,
          base: Path = Path(".")) -> Config:
    """Validate a parsed YAML document into a Config."""
    raw = _mapping("(top level)", raw)
    _reject_unknown("", raw, {"listen", "data_dir", "cache", "upstreams", "default_upstream",
                              "tag_ttl", "upstream_timeout", "breaker", "pinned", "prefetch",
                              "sync", "access", "tls", "siblings", "limits", "server"})
    host, port = _listen(raw.get("listen", "0.0.0.0:5000"))
    data_dir = Path(raw["data_dir"]) if raw.get("data_dir") else default_data_dir(env, uid)

    cache_raw = _mapping("cache", raw.get("cache"))
    _reject_unknown("cache", cache_raw, {"max_size", "high_watermark", "low_watermark",
                                         "scrub_interval", "scrub_rate", "evict_interval",
                                         "abandon_after", "finish_fraction"})
    hw = cache_raw.get("high_watermark", 0.95)
    lw = cache_raw.get("low_watermark", 0.85)
    ff = cache_raw.get("finish_fraction", 0.5)
    for k, v in (("cache.high_watermark", hw), ("cache.low_watermark", lw),
                 ("cache.finish_fraction", ff)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise ConfigError(k, v, "expected a fraction in (0, 1]")
    if lw > hw:
        raise ConfigError("cache.low_watermark", lw, "must not exceed cache.high_watermark")
    cache = CacheConfig(max_size=parse_size("cache.max_size", cache_raw.get("max_size", "20GiB")),
                        high_watermark=float(hw), low_watermark=float(lw),
                        scrub_interval=parse_duration("cache.scrub_interval",
                                                      cache_raw.get("scrub_interval", "24h")),
                        scrub_rate=parse_size("cache.scrub_rate", cache_raw.get("scrub_rate", "64MiB")),
                        evict_interval=_positive("cache.evict_interval",
                                                 cache_raw.get("evict_interval", "30s")),
                        abandon_after=parse_duration("cache.abandon_after",
                                                     cache_raw.get("abandon_after", "10s")),
                        finish_fraction=float(ff))

    ups_raw = _mapping("upstreams", raw.get("upstreams"))
    upstreams: dict[str, UpstreamConfig] = {}
    for name, u in ups_raw.items():
        key = normalize_registry(str(name))
        if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d+)?", key):
            raise ConfigError("upstreams", name, "a key must be a registry host name")
        if key in upstreams:
            raise ConfigError(f"upstreams.{name}", name, f"duplicate of {key}")
        upstreams[key] = _upstream(str(name), u, base)
        upstreams[key] = UpstreamConfig(**{**upstreams[key].__dict__, "name": key})
    if not upstreams:
        raise ConfigError("upstreams", ups_raw, "at least one upstream is required")

    default = raw.get("default_upstream")
    if default is not None:
        default = normalize_registry(str(default))
        if default not in upstreams:
            raise ConfigError("default_upstream", raw.get("default_upstream"),
                              "is not one of the configured upstreams")

    to_raw = _mapping("upstream_timeout", raw.get("upstream_timeout"))
    _reject_unknown("upstream_timeout", to_raw, {"connect", "read"})
    timeouts = Timeouts(connect=parse_duration("upstream_timeout.connect", to_raw.get("connect", 3)),
                        read=parse_duration("upstream_timeout.read", to_raw.get("read", 30)))
    for k, v in (("upstream_timeout.connect", timeouts.connect), ("upstream_timeout.read", timeouts.read)):
        if v <= 0:
            raise ConfigError(k, v, "must be positive")

    br_raw = _mapping("breaker", raw.get("breaker"))
    _reject_unknown("breaker", br_raw, {"failures", "backoff", "max_backoff"})
    failures = br_raw.get("failures", 3)
    if isinstance(failures, bool) or not isinstance(failures, int) or failures < 1:
        raise ConfigError("breaker.failures", failures, "expected a whole number >= 1")
    breaker = BreakerConfig(failures=failures,
                            backoff=parse_duration("breaker.backoff", br_raw.get("backoff", 5)),
                            max_backoff=parse_duration("breaker.max_backoff",
                                                       br_raw.get("max_backoff", 60)))

    lists = {}
    for k in ("pinned", "prefetch"):
        v = raw.get(k)
        if v is None:
            lists[k] = None
            continue
        if not isinstance(v, str) or not v:
            raise ConfigError(k, v, "expected the path of a list file or a directory of them")
        lists[k] = base / v

    return Config(listen_host=host, listen_port=port, data_dir=data_dir, cache=cache,
                  upstreams=upstreams, default_upstream=default,
                  tag_ttl=parse_duration("tag_ttl", raw.get("tag_ttl", 60)),
                  upstream_timeout=timeouts, breaker=breaker, source=source,
                  pinned=lists["pinned"], prefetch=lists["prefetch"],
                  sync=_sync(raw.get("sync")), access=_access(raw.get("access"), base),
                  tls=_listener_tls(raw.get("tls"), base),
                  siblings=_siblings(raw.get("siblings"), base),
                  limits=_limits(raw.get("limits")), server=_server(raw.get("server")))


def _positive(key: str, value: Any) -> float:
    secs = parse_duration(key, value)
    if secs <= 0:
        raise ConfigError(key, value, "must be positive")
    return secs


def _limits(value: Any) -> LimitsConfig:
    raw = _mapping("limits", value)
    _reject_unknown("limits", raw, {"manifest_bytes", "tag_list_bytes", "tag_list_tags",
                                    "tag_lists_kept_bytes", "token_bytes"})
    return LimitsConfig(
        manifest_bytes=parse_size("limits.manifest_bytes", raw.get("manifest_bytes", "4MiB")),
        tag_list_bytes=parse_size("limits.tag_list_bytes", raw.get("tag_list_bytes", "1MiB")),
        tag_list_tags=_count("limits.tag_list_tags", raw.get("tag_list_tags", 10_000), 1, 1_000_000),
        tag_lists_kept_bytes=parse_size("limits.tag_lists_kept_bytes",
                                        raw.get("tag_lists_kept_bytes", "16MiB")),
        token_bytes=parse_size("limits.token_bytes", raw.get("token_bytes", "64KiB")))


def _server(value: Any) -> ServerConfig:
    raw = _mapping("server", value)
    _reject_unknown("server", raw, {"header_timeout", "idle_timeout"})
    return ServerConfig(
        header_timeout=_positive("server.header_timeout", raw.get("header_timeout", "10s")),
        idle_timeout=_positive("server.idle_timeout", raw.get("idle_timeout", "75s")))


def _file(key: str, value: Any, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, value, "expected a file path")
    p = base / value
    if not p.is_file():
        raise ConfigError(key, value, "no such file")
    return p


def _access(value: Any, base: Path) -> AccessConfig:
    raw = _mapping("access", value)
    _reject_unknown("access", raw, {"networks", "htpasswd", "tokens_file", "admin",
                                    "cli_credentials_file", "password_checks"})
    nets = raw.get("networks") or []
    if not isinstance(nets, list):
        raise ConfigError("access.networks", nets, "expected a list of CIDRs")
    for n in nets:
        try:
            ipaddress.ip_network(str(n), strict=False)
        except ValueError:
            raise ConfigError("access.networks", n, "not a CIDR such as 10.0.0.0/8") from None
    admin = raw.get("admin") or []
    if not isinstance(admin, list) or not all(isinstance(a, str) and a for a in admin):
        raise ConfigError("access.admin", admin, "expected a list of user or token names")
    cli = raw.get("cli_credentials_file")
    tokens = _file("access.tokens_file", raw["tokens_file"], base) if raw.get("tokens_file") else None
    if tokens is not None:
        try:
            read_tokens(tokens)
        except ValueError as e:
            raise ConfigError("access.tokens_file", raw["tokens_file"], str(e)) from None
    return AccessConfig(
        networks=tuple(str(n) for n in nets), admin=tuple(admin),
        password_checks=_count("access.password_checks", raw.get("password_checks", 2), 1, 64),
        cli_credentials_file=_file("access.cli_credentials_file", cli, base) if cli else None,
        htpasswd=_file("access.htpasswd", raw["htpasswd"], base) if raw.get("htpasswd") else None,
        tokens_file=tokens)


def _listener_tls(value: Any, base: Path) -> ListenerTLS | None:
    if value is None:
        return None
    raw = _mapping("tls", value)
    _reject_unknown("tls", raw, {"cert_file", "key_file", "client_ca_file", "require_client_cert"})
    for k in ("cert_file", "key_file"):
        if k not in raw:
            raise ConfigError(f"tls.{k}", None, "required when tls is set")
    ca = _file("tls.client_ca_file", raw["client_ca_file"], base) if raw.get("client_ca_file") else None
    require = _bool("tls.require_client_cert", raw.get("require_client_cert", False))
    if require and ca is None:
        raise ConfigError("tls.require_client_cert", True, "needs tls.client_ca_file")
    return ListenerTLS(_file("tls.cert_file", raw["cert_file"], base),
                       _file("tls.key_file", raw["key_file"], base), ca, require)


def _count(key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(key, value, f"expected a whole number from {lo} to {hi}")
    return value


def _siblings(value: Any, base: Path) -> SiblingsConfig:
    if value is None or value is False:
        return SiblingsConfig()
    raw = _mapping("siblings", {} if value is True else value)
    _reject_unknown("siblings", raw, {"mdns", "interfaces", "peers", "secret_file", "node_id",
                                      "timeout", "read_timeout", "health_interval", "fail_after",
                                      "readmit_after", "bad_for", "tls", "min_rate"})
    ifaces = raw.get("interfaces") or []
    if not isinstance(ifaces, list) or not all(isinstance(i, str) and i for i in ifaces):
        raise ConfigError("siblings.interfaces", ifaces, "expected a list of interface names or addresses")
    peers = raw.get("peers") or []
    if not isinstance(peers, list):
        raise ConfigError("siblings.peers", peers, "expected a list of URLs such as http://10.0.0.2:5000")
    for p in peers:
        if not isinstance(p, str) or not re.fullmatch(r"https?://[^/\s]+", p.rstrip("/")):
            raise ConfigError("siblings.peers", p, "expected a URL such as http://10.0.0.2:5000")
    secret = secret_file = None
    if raw.get("secret_file"):
        secret_file = _file("siblings.secret_file", raw["secret_file"], base)
        secret = secret_file.read_bytes().strip()
        if len(secret) < 16:
            raise ConfigError("siblings.secret_file", raw["secret_file"],
                              "the secret must be at least 16 bytes")
    node_id = raw.get("node_id")
    # 48: "edgecache-<id>" must fit one DNS label (63) in mDNS, with room to spare.
    if node_id is not None and not (isinstance(node_id, str)
                                    and re.fullmatch(r"[A-Za-z0-9_-]{1,48}", node_id)):
        raise ConfigError("siblings.node_id", node_id, "expected 1-48 letters, digits, '_' or '-'")
    durations = {}
    for k, default in (("timeout", "2s"), ("read_timeout", "5s"), ("health_interval", "5s"),
                       ("bad_for", "10m")):
        durations[k] = parse_duration(f"siblings.{k}", raw.get(k, default))
        if durations[k] <= 0:
            raise ConfigError(f"siblings.{k}", raw.get(k), "must be positive")
    tls = None
    if raw.get("tls") is not None:
        tls_raw = _mapping("siblings.tls", raw["tls"])
        _reject_unknown("siblings.tls", tls_raw, {"ca_file", "cert_file", "key_file"})
        files = {k: _file(f"siblings.tls.{k}", tls_raw[k], base) if tls_raw.get(k) else None
                 for k in ("ca_file", "cert_file", "key_file")}
        if (files["cert_file"] is None) != (files["key_file"] is None):
            raise ConfigError("siblings.tls.key_file" if files["cert_file"] else "siblings.tls.cert_file",
                              None, "cert_file and key_file go together")
        tls = SiblingTLS(**files)
    return SiblingsConfig(
        enabled=True, tls=tls,
        min_rate=parse_size("siblings.min_rate", raw.get("min_rate", "512KiB")), mdns=_bool("siblings.mdns", raw.get("mdns", True)),
        interfaces=tuple(ifaces), peers=tuple(p.rstrip("/") for p in peers),
        secret=secret, secret_file=secret_file, node_id=node_id,
        fail_after=_count("siblings.fail_after", raw.get("fail_after", 3), 1, 100),
        readmit_after=_count("siblings.readmit_after", raw.get("readmit_after", 2), 1, 100),
        **durations)


def _sync(value: Any) -> SyncConfig:
    raw = _mapping("sync", value)
    _reject_unknown("sync", raw, {"schedule", "interval", "concurrency", "retention", "watch_interval"})
    schedule = raw.get("schedule")
    if schedule is not None:
        try:
            Cron.parse(str(schedule)).next_after(datetime.datetime.now())
        except ValueError as e:
            raise ConfigError("sync.schedule", schedule, f"not a cron expression: {e}") from None
    interval = parse_duration("sync.interval", raw.get("interval", "6h"))
    if interval <= 0:
        raise ConfigError("sync.interval", raw.get("interval"), "must be positive")
    conc = raw.get("concurrency", 4)
    if isinstance(conc, bool) or not isinstance(conc, int) or not 1 <= conc <= 64:
        raise ConfigError("sync.concurrency", conc, "expected a whole number from 1 to 64")
    return SyncConfig(schedule=str(schedule) if schedule is not None else None, interval=interval,
                      concurrency=conc,
                      retention=parse_duration("sync.retention", raw.get("retention", "24h")),
                      watch_interval=_positive("sync.watch_interval", raw.get("watch_interval", "2s")))


def load(path: Path | None, *, env: Mapping[str, str] | None = None, uid: int | None = None) -> Config:
    """Load FILE, else /etc/edgecache/config.yaml when it exists, else the embedded default."""
    env = os.environ if env is None else env
    uid = os.geteuid() if uid is None else uid
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    if path is None:
        return build(yaml.safe_load(DEFAULT_YAML), source="<embedded default>", env=env, uid=uid)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError("--config", str(path), f"cannot read: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise ConfigError("--config", str(path), f"invalid YAML at {where}") from None
    return build(raw, source=str(path), env=env, uid=uid, base=Path(path).parent)
