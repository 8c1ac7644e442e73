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


Credentials = tuple[str, str]       # (user or token name, password or token)


def warnings(cfg: Config, client: str | None = None) -> list[str]:
    """What would make a client's pulls fail or go around the mirror, for this config
    (client None: for any client, as check-config says)."""
    out = []
    if client in (None, "docker") and cfg.default_upstream is None:
        out.append("Docker names no registry in its mirror requests: without "
                   "`default_upstream: docker.io` a dockerd gets 404 from this mirror and "
                   "silently pulls from Docker Hub instead")
    elif client == "docker" and cfg.default_upstream != "docker.io":
        out.append(f"Docker's mirror requests (Docker Hub names such as library/alpine) go to "
                   f"default_upstream {cfg.default_upstream}, not to Docker Hub")
    a = cfg.access
    if not (a.htpasswd or a.tokens_file or (cfg.tls and cfg.tls.client_ca_file)):
        private = [n for n, u in cfg.upstreams.items() if not u.public]
        if private:
            out.append(f"upstream(s) {', '.join(private)} are private (they have credentials, "
                       "or public: false) but no client can authenticate here: set "
                       "access.tokens_file or access.htpasswd, or every pull of them gets 401")
    return out


def k3s(cfg: Config, endpoint: str, wildcard: bool = False,
        credentials: Credentials | None = None) -> str:
    """/etc/rancher/k3s/registries.yaml: one mirror entry per upstream (or "*"), and
    the credentials for the mirror's endpoint (K3s keys `configs` by endpoint host)."""
    names = ["*"] if wildcard else list(cfg.upstreams)
    lines = ["# /etc/rancher/k3s/registries.yaml -- written by `edgecache client-config k3s`",
             "mirrors:"]
    for name in names:
        lines += [f'  "{name}":', f'    endpoint: ["{endpoint}"]']
    if credentials:
        user, password = credentials
        lines += ["configs:", f'  "{_hostport(endpoint)}":', "    auth:",
                  f"      username: {json.dumps(user)}", f"      password: {json.dumps(password)}"]
    return "\n".join(lines) + "\n"


def containerd_auth(endpoint: str, credentials: Credentials) -> str:
    """The CRI plugin's credentials for the mirror (hosts.toml holds none)."""
    user, password = credentials
    return ("# /etc/containerd/config.toml (CRI plugin): credentials for the mirror\n"
            f'[plugins."io.containerd.grpc.v1.cri".registry.configs."{_hostport(endpoint)}".auth]\n'
            f"  username = {json.dumps(user)}\n  password = {json.dumps(password)}\n")


def login(client: str, endpoint: str, credentials: Credentials) -> str:
    """docker/podman: credentials are stored by a login to the mirror's host."""
    user = credentials[0]
    insecure = " --tls-verify=false" if client == "podman" and _plain_http(endpoint) else ""
    text = (f"# credentials for the mirror: give the password or token on stdin\n"
            f"{client} login{insecure} --username {user} --password-stdin {_hostport(endpoint)}\n")
    if client == "docker":
        text += ("# dockerd sends no credentials of this mirror with registry-mirrors requests: "
                 "pull private images by the mirror's name,\n"
                 f"#   docker pull {_hostport(endpoint)}/<registry>/<repository>:<tag>\n")
    return text


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
