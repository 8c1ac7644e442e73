import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgecache.config import DEFAULT_YAML, ConfigError, build, load, parse_duration, parse_size


def cfg(doc, uid=1000, env=None):
    return build(doc, source="<t>", env=env or {"HOME": "/home/u"}, uid=uid)


def test_embedded_default_mirrors_public_registries_on_port_5000():
    c = cfg(yaml.safe_load(DEFAULT_YAML), uid=0)
    assert (c.listen_host, c.listen_port) == ("0.0.0.0", 5000)
    assert set(c.upstreams) == {"docker.io", "ghcr.io", "quay.io", "registry.k8s.io", "gcr.io"}
    assert c.upstreams["docker.io"].url == "https://registry-1.docker.io"
    assert c.cache.max_size == 20 * 1024**3
    assert c.data_dir == Path("/var/lib/edgecache")


def test_data_dir_for_non_root_follows_xdg_cache_home():
    c = cfg(yaml.safe_load(DEFAULT_YAML), uid=1000, env={"XDG_CACHE_HOME": "/x/cache"})
    assert c.data_dir == Path("/x/cache/edgecache")
    c = cfg(yaml.safe_load(DEFAULT_YAML), uid=1000, env={"HOME": "/home/u"})
    assert c.data_dir == Path("/home/u/.cache/edgecache")


@pytest.mark.parametrize("text,n", [("20GiB", 20 * 1024**3), ("500M", 500 * 10**6), ("1T", 10**12),
                                    ("1.5KiB", 1536), (4096, 4096), ("10 MiB", 10 * 1024**2)])
def test_sizes(text, n):
    assert parse_size("k", text) == n


@pytest.mark.parametrize("text,s", [("60s", 60), ("5m", 300), ("6h", 21600), ("250ms", 0.25), (3, 3)])
def test_durations(text, s):
    assert parse_duration("k", text) == s


def test_issue_example_config_is_accepted(tmp_path):
    (tmp_path / "harbor.pass").write_text("s3cret\n")
    (tmp_path / "ca.pem").write_text("x")
    doc = yaml.safe_load(f"""
listen: 127.0.0.1:5050
data_dir: {tmp_path}/data
cache: {{max_size: 20GiB}}
upstreams:
  registry.corp.example:
    url: https://harbor.corp.example
    username: robot$edge
    password_file: {tmp_path}/harbor.pass
    tls: {{ca_file: {tmp_path}/ca.pem, insecure_skip_verify: false}}
  docker.io:
    url: https://registry-1.docker.io
default_upstream: registry.corp.example
tag_ttl: 60s
upstream_timeout: {{connect: 3s, read: 30s}}
""")
    c = cfg(doc)
    u = c.upstreams["registry.corp.example"]
    assert u.password == "s3cret" and u.username == "robot$edge"
    assert c.default_upstream == "registry.corp.example"
    assert c.tag_ttl == 60 and c.upstream_timeout.connect == 3
    assert "s3cret" not in str(c.to_dict())


def test_docker_hub_aliases_are_one_key():
    c = cfg({"upstreams": {"index.docker.io": {"url": "https://registry-1.docker.io"}},
             "default_upstream": "registry-1.docker.io"})
    assert list(c.upstreams) == ["docker.io"] and c.default_upstream == "docker.io"


@pytest.mark.parametrize("doc,key,value", [
    ({"upstreams": {"a.io": {"url": "ftp://x"}}}, "upstreams.a.io.url", "ftp://x"),
    ({"upstreams": {"a.io": {"url": "https://a"}}, "cache": {"max_size": "lots"}}, "cache.max_size", "lots"),
    ({"upstreams": {"a.io": {"url": "https://a"}}, "tag_ttl": "soon"}, "tag_ttl", "soon"),
    ({"upstreams": {"a.io": {"url": "https://a"}}, "listen": "nowhere"}, "listen", "nowhere"),
    ({"upstreams": {"a.io": {"url": "https://a"}}, "default_upstream": "b.io"}, "default_upstream", "b.io"),
    ({"upstreams": {"a.io": {"url": "https://a"}}, "colour": "blue"}, "colour", "blue"),
    ({"upstreams": {"a.io": {"url": "https://a", "password_file": "/nonexistent/p"}}},
     "upstreams.a.io.password_file", "/nonexistent/p"),
    ({"upstreams": {}}, "upstreams", {}),
])
def test_errors_name_the_key_and_the_value(doc, key, value):
    with pytest.raises(ConfigError) as ei:
        cfg(doc)
    assert ei.value.key == key and ei.value.value == value
    assert key in str(ei.value) and repr(value) in str(ei.value)


def test_bad_config_fails_at_start_with_one_line_and_exit_2(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("upstreams:\n  a.io: {url: https://a}\ncache: {max_size: huge}\n")
    for argv in (["serve", "--config", str(p)], ["check-config", str(p)]):
        r = subprocess.run([sys.executable, "-m", "edgecache", *argv], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "cache.max_size" in lines[0] and "'huge'" in lines[0]


def test_check_config_prints_the_effective_configuration(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("upstreams:\n  docker.io: {url: https://registry-1.docker.io}\n"
                 f"data_dir: {tmp_path}/d\ntag_ttl: 2m\n")
    r = subprocess.run([sys.executable, "-m", "edgecache", "check-config", str(p)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    eff = yaml.safe_load(r.stdout)
    assert eff["tag_ttl"] == "2m" and eff["listen"] == "0.0.0.0:5000"
    assert eff["upstreams"]["docker.io"]["url"] == "https://registry-1.docker.io"


def test_load_without_a_file_uses_the_embedded_default(monkeypatch):
    import edgecache.config as c
    monkeypatch.setattr(c, "DEFAULT_CONFIG_PATH", Path("/nonexistent/config.yaml"))
    assert load(None, env={}, uid=0).source == "<embedded default>"


@pytest.mark.parametrize("text,line", [("node-1:\n", 1), ("# c\nok-token\nnode-2:   \n", 3)])
def test_an_empty_token_in_tokens_file_is_a_config_error(tmp_path, text, line):
    (tmp_path / "tokens").write_text(text)
    with pytest.raises(ConfigError) as e:
        build({"upstreams": {"a.example": {"url": "http://127.0.0.1:1"}},
               "access": {"tokens_file": "tokens"}}, source="t", env={}, uid=1000, base=tmp_path)
    assert e.value.key == "access.tokens_file" and f"line {line}" in str(e.value)


@pytest.mark.parametrize("doc,key", [
    ({"limits": {"tag_list_bytes": 0}}, "limits.tag_list_bytes"),
    ({"limits": {"tag_list_tags": -1}}, "limits.tag_list_tags"),
    ({"limits": {"nope": 1}}, "limits.nope"),
    ({"server": {"header_timeout": "0s"}}, "server.header_timeout"),
    ({"cache": {"finish_fraction": 1.5}}, "cache.finish_fraction"),
    ({"cache": {"evict_interval": 0}}, "cache.evict_interval"),
    ({"access": {"password_checks": 0}}, "access.password_checks"),
])
def test_bounds_keys_are_validated(doc, key):
    with pytest.raises(ConfigError) as e:
        build({"upstreams": {"a.example": {"url": "http://127.0.0.1:1"}}, **doc},
              source="t", env={}, uid=1000)
    assert e.value.key == key


def test_check_config_prints_every_key_of_the_dataclasses(tmp_path):
    """to_dict is derived from the config's dataclasses: no key can be left out (it
    once omitted sync.watch_interval and the siblings' fail_after, readmit_after,
    bad_for and min_rate)."""
    (tmp_path / "secret").write_text("s" * 32)
    c = build({"upstreams": {"a.example": {"url": "http://127.0.0.1:1", "username": "u",
                                           "password": "hunter22"}},
               "siblings": {"secret_file": "secret"}}, source="t", env={}, uid=1000, base=tmp_path)
    doc = c.to_dict()
    assert doc["sync"]["watch_interval"] == "2s"
    for k in ("fail_after", "readmit_after", "bad_for", "min_rate", "health_interval"):
        assert k in doc["siblings"], k
    assert doc["limits"]["tag_list_tags"] == 10_000 and doc["server"]["header_timeout"] == "10s"
    assert doc["upstreams"]["a.example"]["password"] == "***"
    text = yaml.safe_dump(doc)
    assert "hunter22" not in text and "s" * 32 not in text
    assert cfg({"upstreams": {"a.example": {"url": "http://127.0.0.1:1"}}}).to_dict()["siblings"] is None


def test_a_zero_watch_interval_is_an_error_not_two_seconds():
    with pytest.raises(ConfigError) as e:
        cfg({"upstreams": {"a.example": {"url": "http://127.0.0.1:1"}}, "sync": {"watch_interval": 0}})
    assert e.value.key == "sync.watch_interval"


def test_empty_and_null_values_mean_what_they_meant():
    """A null for a key with a default is an error (not "the default": `public: null`
    must not make an upstream with credentials public); an optional key left empty
    is unset."""
    up = {"url": "http://127.0.0.1:1", "username": "u", "password": "p"}
    with pytest.raises(ConfigError) as e:
        cfg({"upstreams": {"a.example": {**up, "public": None}}})
    assert e.value.key == "upstreams.a.example.public"
    with pytest.raises(ConfigError) as e:
        cfg({"upstreams": {"a.example": up}, "tag_ttl": None})
    assert e.value.key == "tag_ttl"
    c = cfg({"upstreams": {"a.example": up},
             "access": {"htpasswd": "", "tokens_file": None}, "cache": None})
    assert c.access.htpasswd is None and c.access.tokens_file is None
    assert c.cache.max_size == 20 * 1024**3 and not c.upstreams["a.example"].public
    with pytest.raises(ConfigError) as e:
        cfg({"upstreams": {"a.example": up}, "breaker": {"failures": 0}})
    assert "whole number >= 1" in str(e.value)


def test_check_config_prints_units_people_write_and_reads_back_the_same(tmp_path):
    doc = {"upstreams": {"a.example": {"url": "http://127.0.0.1:1"}}, "tag_ttl": 90,
           "cache": {"max_size": "20GiB", "scrub_rate": 1000, "abandon_after": "250ms"},
           "sync": {"interval": "6h", "retention": "1d"}, "data_dir": str(tmp_path)}
    c = cfg(doc)
    printed = c.to_dict()
    assert (printed["tag_ttl"], printed["cache"]["max_size"], printed["cache"]["scrub_rate"],
            printed["cache"]["abandon_after"], printed["sync"]["interval"],
            printed["sync"]["retention"]) == ("90s", "20GiB", "1000", "0.25s", "6h", "1d")
    again = yaml.safe_load(yaml.safe_dump(printed))
    again.pop("siblings")
    assert cfg(again) == c


def test_yaml_errors_name_file_line_and_reason_and_a_key_twice_is_one(tmp_path):
    f = tmp_path / "edgecache.yaml"
    f.write_text("upstreams:\n  a.example: {url: http://127.0.0.1:1}\ntag_ttl: 5s\ntag_ttl: 9s\n")
    with pytest.raises(ConfigError) as e:
        load(f, env={}, uid=1000)
    assert e.value.key == f"{f}:4" and "duplicate key 'tag_ttl'" in str(e.value)
    f.write_text("upstreams:\n  a.example: {url: http://127.0.0.1:1\ntag_ttl: 5s\n")
    with pytest.raises(ConfigError) as e:
        load(f, env={}, uid=1000)
    assert e.value.key == f"{f}:3" and "expected ',' or '}'" in str(e.value)
    # The line is named by its key: its value may be a secret.
    f.write_text("upstreams:\n  a.example:\n    url: http://127.0.0.1:1\n    username: u\n"
                 "    password: hunter3\n    password: hunter4\n")
    with pytest.raises(ConfigError) as e:
        load(f, env={}, uid=1000)
    assert "duplicate key 'password'" in str(e.value) and "hunter" not in str(e.value)


def test_check_config_reports_missing_list_files_and_their_problems(tmp_path):
    (tmp_path / "prefetch.yaml").write_text(
        "images:\n  - ref: a.example/x:1\n    track: true\n    track: false\n  - a.example/y:1\n")
    p = tmp_path / "c.yaml"
    p.write_text("upstreams:\n  a.example: {url: http://127.0.0.1:1}\n"
                 f"data_dir: {tmp_path}/d\npinned: nowhere.yaml\nprefetch: prefetch.yaml\n")
    r = subprocess.run([sys.executable, "-m", "edgecache", "check-config", str(p)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"error: pinned: {tmp_path}/nowhere.yaml: no such file or directory" in r.stderr
    assert f"error: prefetch: {tmp_path}/prefetch.yaml:2: duplicate key 'track'" in r.stderr
    assert "# prefetch: 1 entries" in r.stdout
