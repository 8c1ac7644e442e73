"""Typed, frozen configuration: loaded and validated once at start.

Each key is a dataclass field made by `setting` (its default and its parser,
from config_values.py, written once); the known keys, the parsing and `to_dict`
are derived from them.
Every error names the key and the offending value, so a bad config fails with
one line. `parse` touches no file; `read_files` is the one place that does. The environment (uid, XDG dirs) is passed in, never read globally by
callers, so tests can build configs without touching the machine.

Longer than most modules on purpose: the dataclasses are the schema, and the
builder beside them is what reads it; value parsers are in config_values.py.
"""
from __future__ import annotations

import os
import re
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import yaml

from edgecache.config_values import (FILE, PATH, REQUIRED, at_least_one, count, flag,
                                     format_duration, format_size, fraction, networks,
                                     node_id_text, parse_duration, parse_size, peers, positive,
                                     realms, schedule, section, setting, strings, text)
from edgecache.credentials import read_tokens
from edgecache.errors import ConfigError
from edgecache.yamlerror import load_yaml, where_and_why

DEFAULT_CONFIG_PATH = Path("/etc/edgecache/config.yaml")

# The embedded default: a useful mirror for the public registries on port 5000
# (every other key at its default, written once below; check-config prints them).
DEFAULT_YAML = """\
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
"""

# Docker Hub answers to several names; all of them mean the key "docker.io".
DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class TLSConfig:
    ca_file: Path | None = setting(None, kind=FILE)
    insecure_skip_verify: bool = setting(False, flag)


@dataclass(frozen=True)
class UpstreamConfig:
    name: str                     # the registry host as clients name it
    url: str                      # where to dial it
    username: str | None = setting(None, text)
    password: str | None = setting(None, text, repr=False)
    password_file: Path | None = setting(None, kind=FILE)    # read into password at start
    tls: TLSConfig = section(TLSConfig, TLSConfig())
    # Served to anonymous clients? An upstream with credentials is not, unless it says so.
    public: bool = setting(True, flag)
    # Token services on other hosts that may see the credentials (the upstream's own
    # host always may); any other realm is asked without them.
    token_realms: tuple[str, ...] = setting((), realms)


@dataclass(frozen=True)
class Timeouts:
    connect: float = setting(3.0, positive)
    read: float = setting(30.0, positive)


@dataclass(frozen=True)
class CacheConfig:
    max_size: int = setting(20 * 1024**3, parse_size)
    high_watermark: float = setting(0.95, fraction)  # start evicting above this fraction of max_size
    low_watermark: float = setting(0.85, fraction)   # ... and stop below this one
    scrub_interval: float = setting(24 * 3600.0, parse_duration)  # re-hash every blob this often (0: never)
    scrub_rate: int = setting(64 * 1024**2, parse_size)          # bytes per second the scrub may read
    evict_interval: float = setting(30.0, positive)  # how often the budget is checked besides commits
    abandon_after: float = setting(10.0, parse_duration)  # a fill nobody waits for is cancelled after this...
    finish_fraction: float = setting(0.5, fraction)  # ... unless it is this far along (or sync work)


@dataclass(frozen=True)
class LimitsConfig:
    """Caps on what an upstream (or a client through it) can make the cache hold."""

    manifest_bytes: int = setting(4 * 1024**2, parse_size)
    tag_list_bytes: int = setting(1024**2, parse_size)        # one tag list page from the upstream
    tag_list_tags: int = setting(10_000, count(1, 1_000_000))  # tags in one page (the `n` asked)
    tag_lists_kept_bytes: int = setting(16 * 1024**2, parse_size)  # full lists kept for offline answers
    token_bytes: int = setting(64 * 1024, parse_size)         # a token service's answer
    supply_chain_bytes: int = setting(256 * 1024**2, parse_size)  # an image's referrers and cosign tags, synced


@dataclass(frozen=True)
class ServerConfig:
    header_timeout: float = setting(10.0, positive)  # a request head must arrive whole within this
    idle_timeout: float = setting(75.0, positive)    # an idle keep-alive connection is closed after this


@dataclass(frozen=True)
class BreakerConfig:
    failures: int = setting(3, at_least_one)  # consecutive connection failures that open it
    backoff: float = setting(5.0, parse_duration)     # first open period; doubles up to max_backoff
    max_backoff: float = setting(60.0, parse_duration)


@dataclass(frozen=True)
class AccessConfig:
    networks: tuple[str, ...] = setting((), networks)   # allowed client CIDRs; empty: any
    htpasswd: Path | None = setting(None, kind=FILE)     # bcrypt Basic credentials
    # Static bearer tokens, one per line (NAME:TOKEN or TOKEN).
    tokens_file: Path | None = setting(None, kind=FILE)
    # Who may POST gc/verify/sync; empty: anyone authenticated.
    admin: tuple[str, ...] = setting((), strings("user or token names"))
    # USER:PASSWORD or a TOKEN the CLI sends the daemon.
    cli_credentials_file: Path | None = setting(None, kind=FILE)
    password_checks: int = setting(2, count(1, 64))      # bcrypt checks run at once (own threads)


@dataclass(frozen=True)
class ListenerTLS:
    cert_file: Path = setting(REQUIRED, kind=FILE)
    key_file: Path = setting(REQUIRED, kind=FILE)
    # Mutual TLS: a verified client certificate authenticates.
    client_ca_file: Path | None = setting(None, kind=FILE)
    require_client_cert: bool = setting(False, flag)


@dataclass(frozen=True)
class SyncConfig:
    schedule: str | None = setting(None, schedule)   # 5-field cron; when set it wins over interval
    interval: float = setting(6 * 3600.0, positive)
    concurrency: int = setting(4, count(1, 64))      # images fetched at once
    retention: float = setting(24 * 3600.0, parse_duration)  # a replaced pinned image stays pinned so long
    watch_interval: float = setting(2.0, positive)   # how often list files are checked for edits


@dataclass(frozen=True)
class SiblingTLS:
    ca_file: Path | None = setting(None, kind=FILE)  # the CA siblings' certificates chain to
    cert_file: Path | None = setting(None, kind=FILE)  # our client certificate, for listeners that want one
    key_file: Path | None = setting(None, kind=FILE)


@dataclass(frozen=True)
class SiblingsConfig:
    """Other edgecaches on the branch LAN, asked for content by digest before the WAN."""

    enabled: bool = False                    # the `siblings` key is there at all
    mdns: bool = setting(True, flag)        # advertise and browse _edgecache._tcp.local.
    interfaces: tuple[str, ...] = setting((), strings("interface names or addresses"))  # empty: all
    peers: tuple[str, ...] = setting((), peers)   # static base URLs (other VLANs, no multicast)
    secret: bytes | None = field(default=None, repr=False)   # HMAC key for hop requests, from:
    secret_file: Path | None = setting(None, kind=FILE)
    node_id: str | None = setting(None, node_id_text)  # default: generated once, kept in data_dir
    timeout: float = setting(2.0, positive)       # connect + response headers from a sibling
    read_timeout: float = setting(5.0, positive)  # longest silence inside a sibling's body
    health_interval: float = setting(5.0, positive)
    fail_after: int = setting(3, count(1, 100))   # failed checks that drop a sibling
    readmit_after: int = setting(2, count(1, 100))  # good checks that bring it back
    bad_for: float = setting(600.0, positive)     # how long a sibling that sent wrong bytes is shunned
    min_rate: int = setting(512 * 1024, parse_size)  # bytes/s below which a sibling's body is given up
    tls: "SiblingTLS | None" = section(SiblingTLS)   # for https siblings: whom to trust, what to present


@dataclass(frozen=True)
class PolicyRule:
    """`policy:` items: the images a rule matches must be signed by one of its keys."""

    name: str
    match: tuple[str, ...]          # globs over "registry/repository" (`*` spans slashes)
    require: str                    # "signature"
    keys: tuple[Path, ...]          # cosign public keys (PEM: ECDSA, RSA, Ed25519)
    mode: str = "enforce"           # enforce: refuse (403 DENIED); warn: serve, log, count
    public_keys: tuple[bytes, ...] = field(default=(), repr=False)   # the keys' PEM, read at start


POLICY_KEYS = ("name", "match", "require", "keys", "mode")
POLICY_MODES = ("enforce", "warn")


@dataclass(frozen=True)
class Config:
    listen_host: str
    listen_port: int
    data_dir: Path
    upstreams: Mapping[str, UpstreamConfig]
    default_upstream: str | None
    source: str                   # where it came from: a path or "<embedded default>"
    tag_ttl: float = setting(60.0, parse_duration)
    cache: CacheConfig = section(CacheConfig, CacheConfig())
    upstream_timeout: Timeouts = section(Timeouts, Timeouts())
    breaker: BreakerConfig = section(BreakerConfig, BreakerConfig())
    pinned: Path | None = setting(None, kind=PATH)    # a list file or a directory of them
    prefetch: Path | None = setting(None, kind=PATH)
    sync: SyncConfig = section(SyncConfig, SyncConfig())
    access: AccessConfig = section(AccessConfig, AccessConfig())
    tls: ListenerTLS | None = section(ListenerTLS)
    siblings: SiblingsConfig = section(SiblingsConfig, SiblingsConfig())
    limits: LimitsConfig = section(LimitsConfig, LimitsConfig())
    server: ServerConfig = section(ServerConfig, ServerConfig())
    policy: tuple[PolicyRule, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The effective configuration, secrets masked (for check-config): derived
        from the dataclasses, so a key added to them is printed too."""
        doc: dict[str, Any] = {"listen": f"{self.listen_host}:{self.listen_port}"}
        for f in fields(self):
            if f.name not in ("listen_host", "listen_port", "source"):
                doc[f.name] = _in_units(f, getattr(self, f.name))
        for rule in doc["policy"]:
            del rule["public_keys"]                # keys says it
        for u in doc["upstreams"].values():
            del u["name"]                         # it is the key
        if not self.siblings.enabled:
            doc["siblings"] = None
        else:
            del doc["siblings"]["enabled"], doc["siblings"]["secret"]   # secret_file says it
        return doc


def _plain(value: Any) -> Any:
    """A config value as YAML prints it: fields hidden from repr (passwords, secrets)
    masked, sizes and durations in the units people write (`20GiB`, `60s`), paths as
    strings, tuples as lists."""
    if is_dataclass(value):
        return {f.name: ("***" if getattr(value, f.name) else None) if not f.repr
                else _in_units(f, getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _in_units(f: Any, value: Any) -> Any:
    parse = f.metadata.get("parse")
    if parse is parse_size and isinstance(value, int):
        return format_size(value)
    if parse in (parse_duration, positive) and isinstance(value, float):
        return format_duration(value)
    return _plain(value)


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


def _keys(cls: type) -> dict[str, Any]:
    """The YAML keys of a config dataclass: its fields made by `setting` or `section`."""
    return {f.name: f for f in fields(cls) if "parse" in f.metadata or "section" in f.metadata}


def _reject_unknown(key: str, raw: Mapping[str, Any], known: Iterable[str]) -> None:
    known = set(known)
    for k in raw:
        if k not in known:
            raise ConfigError(f"{key}.{k}" if key else str(k), raw[k], "unknown key")


def _section(cls: type, key: str, raw: Any, base: Path, *, also: Iterable[str] = (),
             **given: Any) -> Any:
    """A config dataclass from its YAML mapping: every key one of its fields, parsed
    by that field's parser; absent keys take the field's default. `also` are keys the
    caller reads itself, `given` the fields it worked out."""
    raw = _mapping(key, raw)
    keys = _keys(cls)
    _reject_unknown(key, raw, [*keys, *also])
    values: dict[str, Any] = {}
    for name, f in keys.items():
        k = f"{key}.{name}" if key else name
        if name in given:
            continue
        value = raw.get(name)
        optional = f.default is None
        if name not in raw or (optional and value is None) or (
                optional and f.metadata.get("kind") == FILE and not value):
            # Absent, or an optional key left empty (`node_id: null`, `htpasswd: ""`): unset.
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(k, None, f"required when {key} is set")
            continue
        if "section" in f.metadata:
            values[name] = _section(f.metadata["section"], k, value, base)
        elif f.metadata["kind"]:
            if not isinstance(value, str) or not value:
                raise ConfigError(k, value, "expected a file path" if f.metadata["kind"] == FILE
                                  else "expected the path of a list file or a directory of them")
            values[name] = base / value
        else:
            values[name] = f.metadata["parse"](k, value)
    return cls(**values, **given)


def _listen(value: Any) -> tuple[str, int]:
    m = re.fullmatch(r"\[?([^\]]*?)\]?:(\d{1,5})", str(value))
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ConfigError("listen", value, "expected HOST:PORT, e.g. 0.0.0.0:5000")
    return m.group(1) or "0.0.0.0", int(m.group(2))


def _upstream(name: str, raw: Any, base: Path) -> UpstreamConfig:
    key = f"upstreams.{name}"
    raw = _mapping(key, raw)
    url = raw.get("url")
    if not isinstance(url, str) or not re.fullmatch(r"https?://[^/\s]+(/.*)?", url):
        raise ConfigError(f"{key}.url", url, "expected an http:// or https:// URL")
    if "@" in url.split("://", 1)[1].split("/", 1)[0]:
        # Credentials in the URL would be shown wherever the URL is (status, logs,
        # check-config) and would not make the upstream private.
        raise ConfigError(f"{key}.url", re.sub(r"//[^/@]*@", "//***@", url),
                          "credentials do not go in the URL: use username and password_file")
    given: dict[str, Any] = {"name": normalize_registry(name), "url": url.rstrip("/")}
    if url.rstrip("/") == "https://registry-1.docker.io" and "token_realms" not in raw:
        given["token_realms"] = ("https://auth.docker.io/token",)    # Docker Hub's token service
    u = _section(UpstreamConfig, key, raw, base, also=["url"], **given)
    if "public" not in raw:
        u = replace(u, public=u.username is None)
    return u


def _policy(raw: Any, base: Path) -> tuple[PolicyRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("policy", raw, "expected a list of rules")
    rules: list[PolicyRule] = []
    for i, item in enumerate(raw):
        key = f"policy[{i}]"
        item = _mapping(key, item)
        _reject_unknown(key, item, POLICY_KEYS)
        name = item.get("name", f"policy-{i + 1}")
        if not isinstance(name, str) or not re.fullmatch(r"[\w.@-]{1,64}", name):
            raise ConfigError(f"{key}.name", name, "expected a name of letters, digits, . _ - @")
        if any(r.name == name for r in rules):
            raise ConfigError(f"{key}.name", name, "another rule has this name")
        match = item.get("match")
        globs = [match] if isinstance(match, str) else match
        if not isinstance(globs, list) or not globs or not all(
                isinstance(g, str) and 0 < len(g) <= 255 for g in globs):
            raise ConfigError(f"{key}.match", match,
                              "expected registry/repository globs, e.g. registry.corp.example/pos/*")
        if item.get("require") != "signature":
            raise ConfigError(f"{key}.require", item.get("require"), "expected: signature")
        keys = item.get("keys")
        keys = [keys] if isinstance(keys, str) else keys
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k for k in keys):
            raise ConfigError(f"{key}.keys", item.get("keys"), "expected a list of public key files")
        mode = item.get("mode", "enforce")
        if mode not in POLICY_MODES:
            raise ConfigError(f"{key}.mode", mode, "expected enforce or warn")
        rules.append(PolicyRule(name, tuple(_glob(g) for g in globs), "signature",
                                tuple(base / k for k in keys), mode))
    return tuple(rules)


def _glob(pattern: str) -> str:
    """The registry part named as upstreams are keyed (Docker Hub's aliases as one),
    and a Docker Hub official image as its repository is named (`library/nginx`)."""
    registry, sep, repo = pattern.partition("/")
    registry = normalize_registry(registry)
    if registry == "docker.io" and repo and "/" not in repo and not any(c in repo for c in "*?["):
        repo = f"library/{repo}"
    return f"{registry}{sep}{repo}"


def _checked(cfg: Config) -> Config:
    """What no single key can say: keys that must agree (once the files are read)."""
    for name, u in cfg.upstreams.items():
        if (u.username is None) != (u.password is None):
            raise ConfigError(f"upstreams.{name}.username", u.username,
                              "username and password go together")
    c = cfg.cache
    if c.low_watermark > c.high_watermark:
        raise ConfigError("cache.low_watermark", c.low_watermark,
                          "must not exceed cache.high_watermark")
    if cfg.tls is not None and cfg.tls.require_client_cert and cfg.tls.client_ca_file is None:
        raise ConfigError("tls.require_client_cert", True, "needs tls.client_ca_file")
    for i, rule in enumerate(cfg.policy):
        for glob in rule.match:
            registry = glob.partition("/")[0]
            if not any(c in registry for c in "*?[") and registry not in cfg.upstreams:
                # A rule that can match nothing would pass every image unchecked.
                raise ConfigError(f"policy[{i}].match", glob,
                                  f"{registry} is not one of the configured upstreams")
    t = cfg.siblings.tls
    if t is not None and (t.cert_file is None) != (t.key_file is None):
        raise ConfigError("siblings.tls.key_file" if t.cert_file else "siblings.tls.cert_file",
                          None, "cert_file and key_file go together")
    return cfg


def parse(raw: Any, *, source: str, env: Mapping[str, str], uid: int,
          base: Path = Path(".")) -> Config:
    """Each key of a parsed YAML document validated into a Config, touching no
    file: paths are resolved against `base` (`read_files` checks and reads them;
    `build` does all three steps)."""
    raw = _mapping("(top level)", raw)
    host, port = _listen(raw.get("listen", "0.0.0.0:5000"))
    data_dir = Path(raw["data_dir"]) if raw.get("data_dir") else default_data_dir(env, uid)

    ups_raw = _mapping("upstreams", raw.get("upstreams"))
    upstreams: dict[str, UpstreamConfig] = {}
    for name, u in ups_raw.items():
        key = normalize_registry(str(name))
        if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d+)?", key):
            raise ConfigError("upstreams", name, "a key must be a registry host name")
        if key in upstreams:
            raise ConfigError(f"upstreams.{name}", name, f"duplicate of {key}")
        upstreams[key] = _upstream(str(name), u, base)
    if not upstreams:
        raise ConfigError("upstreams", ups_raw, "at least one upstream is required")

    default = raw.get("default_upstream")
    if default is not None:
        default = normalize_registry(str(default))
        if default not in upstreams:
            raise ConfigError("default_upstream", raw.get("default_upstream"),
                              "is not one of the configured upstreams")

    sib = raw.get("siblings")
    siblings = SiblingsConfig() if sib is None or sib is False else _section(
        SiblingsConfig, "siblings", {} if sib is True else sib, base, enabled=True)
    given = {"listen_host": host, "listen_port": port, "data_dir": data_dir,
             "upstreams": upstreams, "default_upstream": default, "source": source,
             "siblings": siblings, "policy": _policy(raw.get("policy"), base)}
    return _section(Config, "", raw, base,
                    also=["listen", "data_dir", "upstreams", "default_upstream", "siblings",
                          "policy"],
                    **given)


def _files(value: Any, key: str) -> Iterator[tuple[str, Path]]:
    """Every file a config names: (its key, its path)."""
    if not is_dataclass(value):
        return
    for f in fields(value):
        v = getattr(value, f.name)
        k = f"{key}.{f.name}" if key else f.name
        if f.metadata.get("kind") == FILE and v is not None:
            yield k, v
        elif isinstance(v, Mapping):
            for name, item in v.items():
                yield from _files(item, f"{k}.{name}")
        else:
            yield from _files(v, k)


def _read(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(key, str(path), f"cannot read: {e.strerror}") from None


def read_files(cfg: Config) -> Config:
    """The one place the files a config names are touched: each must exist; the
    upstreams' password files and the siblings' secret are read into the config, the
    tokens file is checked line by line (access.py reads the credential files again
    at every reload: they change without the config)."""
    for key, path in _files(cfg, ""):
        if not path.is_file() and not key.endswith(".password_file"):
            raise ConfigError(key, str(path), "no such file")
    upstreams = {}
    for name, u in cfg.upstreams.items():
        if u.password_file is not None:
            key = f"upstreams.{name}.password_file"
            u = replace(u, password=_read(key, u.password_file).decode().strip())
        upstreams[name] = u
    s = cfg.siblings
    if s.secret_file is not None:
        secret = _read("siblings.secret_file", s.secret_file).strip()
        if len(secret) < 16:
            raise ConfigError("siblings.secret_file", str(s.secret_file),
                              "the secret must be at least 16 bytes")
        s = replace(s, secret=secret)
    if cfg.access.tokens_file is not None:
        try:
            read_tokens(cfg.access.tokens_file)
        except ValueError as e:
            raise ConfigError("access.tokens_file", str(cfg.access.tokens_file), str(e)) from None
    return replace(cfg, upstreams=upstreams, siblings=s,
                   policy=tuple(_rule_keys(i, rule) for i, rule in enumerate(cfg.policy)))


def _rule_keys(i: int, rule: PolicyRule) -> PolicyRule:
    """A rule with its keys read and checked (each a public key cosign can verify with)."""
    from edgecache.policy.keys import load_public_key
    pems = []
    for j, path in enumerate(rule.keys):
        key = f"policy[{i}].keys[{j}]"
        pem = _read(key, path)
        try:
            load_public_key(pem)
        except ValueError as e:
            raise ConfigError(key, str(path), str(e)) from None
        pems.append(pem)
    return replace(rule, public_keys=tuple(pems))


def build(raw: Any, *, source: str, env: Mapping[str, str], uid: int,
          base: Path = Path(".")) -> Config:
    """A Config from a parsed YAML document: its keys, then its files, then the keys
    that must agree."""
    return _checked(read_files(parse(raw, source=source, env=env, uid=uid, base=base)))


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
        raw = load_yaml(text)
    except yaml.YAMLError as e:
        line, why = where_and_why(e)
        # The line's key, never its value (it may be a password).
        lines = text.splitlines()
        key = lines[line - 1].split(":", 1)[0].strip() if 0 < line <= len(lines) else ""
        raise ConfigError(f"{path}:{line}", key, f"invalid YAML: {why}") from None
    return build(raw, source=str(path), env=env, uid=uid, base=Path(path).parent)
