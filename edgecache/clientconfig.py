"""Client configuration snippets that point K3s, containerd, Docker and podman at
this mirror, made from the configured upstreams. Pure functions: text in, text out."""
from __future__ import annotations

import json
from urllib.parse import urlsplit

from edgecache.config import Config

CLIENTS = ("k3s", "containerd", "docker", "podman")


def default_endpoint(cfg: Config, hostname: str) -> str:
    host = hostname if cfg.listen_host in ("0.0.0.0", "::", "") else cfg.listen_host
    return f"http://{host}:{cfg.listen_port}"


def _hostport(endpoint: str) -> str:
    return urlsplit(endpoint).netloc


def _plain_http(endpoint: str) -> bool:
    return urlsplit(endpoint).scheme == "http"


def k3s(cfg: Config, endpoint: str, wildcard: bool = False) -> str:
    """/etc/rancher/k3s/registries.yaml: one mirror entry per upstream (or "*")."""
    names = ["*"] if wildcard else list(cfg.upstreams)
    lines = ["# /etc/rancher/k3s/registries.yaml -- written by `edgecache client-config k3s`",
             "mirrors:"]
    for name in names:
        lines += [f'  "{name}":', f'    endpoint: ["{endpoint}"]']
    return "\n".join(lines) + "\n"


def containerd(cfg: Config, endpoint: str) -> dict[str, str]:
    """hosts.toml per registry directory (certs.d/<registry>/hosts.toml)."""
    out = {}
    for name, up in cfg.upstreams.items():
        server = "https://registry-1.docker.io" if name == "docker.io" else up.url
        out[name] = (f'# {name}: pull through edgecache; the registry itself stays the fallback\n'
                     f'server = "{server}"\n\n'
                     f'[host."{endpoint}"]\n'
                     f'  capabilities = ["pull", "resolve"]\n')
    return out


def docker(cfg: Config, endpoint: str) -> tuple[str, str]:
    """daemon.json, and a note: Docker mirrors Docker Hub only."""
    doc: dict[str, list[str]] = {"registry-mirrors": [endpoint]}
    if _plain_http(endpoint):
        doc["insecure-registries"] = [_hostport(endpoint)]
    note = ("Docker uses registry-mirrors for Docker Hub (docker.io) only; images from other "
            "registries are pulled directly.")
    if "docker.io" not in cfg.upstreams:
        note += " This edgecache has no docker.io upstream, so the mirror would not be used."
    return json.dumps(doc, indent=2) + "\n", note


def podman(cfg: Config, endpoint: str) -> str:
    """registries.conf [[registry.mirror]] entries, path-prefix form."""
    hp = _hostport(endpoint)
    lines = ["# /etc/containers/registries.conf.d/edgecache.conf -- written by "
             "`edgecache client-config podman`"]
    for name in cfg.upstreams:
        lines += ["", "[[registry]]", f'location = "{name}"', "", "[[registry.mirror]]",
                  f'location = "{hp}/{name}"']
        if _plain_http(endpoint):
            lines.append("insecure = true")
    return "\n".join(lines) + "\n"
