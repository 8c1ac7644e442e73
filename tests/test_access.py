"""Access control: private upstreams need credentials (htpasswd bcrypt, bearer
tokens, client certificates); client networks; the TLS listener."""
import asyncio
import base64
import json
import ssl
import subprocess

import aiohttp
import bcrypt
import pytest

from tests.conftest import require_binaries
from tests.support.certs import make_certs
from tests.support.edge import EdgeProcess, EdgeServer, make_config
from tests.support.faulty import FaultyUpstream
from tests.support.images import make_image, push


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
async def world(tmp_path):
    img = make_image(71, layer_size=4096)
    (tmp_path / "htpasswd").write_text(
        "# users\nalice:" + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1) + "\n")
    (tmp_path / "tokens").write_text("# K3s nodes\nnode-1:tok-abc123\n")
    async with FaultyUpstream({"private/app:v1": img, "public/app:v1": img}) as up:
        doc = make_config(tmp_path / "data", {}, default="private.example")
        doc["upstreams"] = {
            "private.example": {"url": up.url, "username": "robot", "password": "x"},   # private by default
            "public.example": {"url": up.url},
        }
        doc["access"] = {"htpasswd": str(tmp_path / "htpasswd"), "tokens_file": str(tmp_path / "tokens"),
                         "networks": ["127.0.0.0/8", "::1/128"]}
        async with EdgeServer(doc) as edge, aiohttp.ClientSession() as session:
            yield up, edge, img, session


async def get(edge, session, path, **headers):
    async with session.get(edge.url + path, headers=headers) as r:
        return r.status, r.headers, await r.read()


async def test_anonymous_clients_get_401_for_a_private_upstream_and_are_logged(world, caplog):
    up, edge, img, session = world
    status, h, body = await get(edge, session, "/v2/private/app/manifests/v1?ns=private.example")
    assert status == 401 and json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
    assert h["WWW-Authenticate"] == 'Basic realm="edgecache"'
    assert up.count("GET", ".*") == 0 and up.count("HEAD", ".*") == 0     # never reached upstream
    assert any("denied" in r.getMessage() for r in caplog.records)
    # A public upstream is served to anyone.
    assert (await get(edge, session, "/v2/public/app/manifests/v1?ns=public.example"))[0] == 200


@pytest.mark.parametrize("auth,ok", [(basic("alice", "s3cret"), True), (basic("alice", "nope"), False),
                                     (basic("bob", "s3cret"), False), ("Bearer tok-abc123", True),
                                     ("Bearer tok-wrong", False), ("Digest x", False), ("Basic !!", False)])
async def test_credentials(world, auth, ok):
    up, edge, img, session = world
    status, _, body = await get(edge, session, f"/v2/private/app/blobs/{img.layers[0].digest}?ns=private.example",
                                Authorization=auth)
    if ok:
        assert status == 200 and body == img.layers[0].data
    else:
        assert status == 401


async def test_admin_actions_need_credentials(world):
    up, edge, img, session = world
    async with session.post(edge.url + "/_edgecache/gc") as r:
        assert r.status == 401
    async with session.post(edge.url + "/_edgecache/gc", headers={"Authorization": "Bearer tok-abc123"}) as r:
        assert r.status == 200


# (method, path, anonymous, with a token): each door as a client meets it, routed or not.
DOORS = [
    ("GET", "/_edgecache/health", 200, 200),
    ("POST", "/_edgecache/health", 401, 405),        # open to GET only: POST is the admin's door
    ("GET", "/_edgecache/sibling", 404, 404),        # open, and siblings are off here
    ("POST", "/_edgecache/sibling", 401, 405),
    ("HEAD", "/_edgecache/status", 401, 200),
    ("HEAD", "/metrics", 401, 200),
    ("GET", "/_edgecache/", 401, 200),               # the status page
    ("HEAD", "/_edgecache/", 401, 200),
    ("POST", "/_edgecache/import", 401, 403),        # seeding through the daemon: access.admin only
    ("POST", "/_edgecache/export", 401, 403),
    ("GET", "/_edgecache/gc", 401, 405),             # a POST-only path
    ("PUT", "/_edgecache/status", 401, 405),
    ("DELETE", "/metrics", 401, 405),
    ("GET", "/_edgecache/nothing-here", 401, 404),   # no route: says nothing to strangers
    ("POST", "/_edgecache/nothing-here", 401, 404),
]


@pytest.mark.parametrize("method,path,anonymous,with_token", DOORS)
async def test_every_operator_door_as_a_client_meets_it(world, method, path, anonymous, with_token):
    up, edge, img, session = world
    for auth, want in ((None, anonymous), ("Bearer tok-abc123", with_token)):
        async with session.request(method, edge.url + path,
                                   headers={"Authorization": auth} if auth else {}) as r:
            body = await r.read()
            assert r.status == want, (method, path, auth, r.status, body)
            if want >= 400 and method != "HEAD":
                code = json.loads(body)["errors"][0]["code"]
                assert code == {401: "UNAUTHORIZED", 403: "DENIED", 404: "NAME_UNKNOWN",
                        405: "UNSUPPORTED"}[want], body
    assert sum(up.counts.values()) == 0


async def test_clients_outside_the_allowed_networks_are_denied(tmp_path):
    img = make_image(72, layer_size=1024)
    async with FaultyUpstream({"public/app:v1": img}) as up:
        doc = make_config(tmp_path / "data", {"public.example": up.url}, default="public.example",
                          access={"networks": ["10.0.0.0/8"]})
        async with EdgeServer(doc) as edge, aiohttp.ClientSession() as session:
            status, _, body = await get(edge, session, "/v2/public/app/manifests/v1")
            assert status == 403 and json.loads(body)["errors"][0]["code"] == "DENIED"
            assert sum(up.counts.values()) == 0


async def test_a_kept_alive_connection_is_checked_again_after_a_reload(tmp_path):
    """The network check is remembered per connection, for one generation of the rules:
    a reload that shuts a network out refuses the next request on an open connection."""
    from edgecache.config import AccessConfig
    img = make_image(74, layer_size=1024)
    opened, reused = [], []              # connections the client opened, and reuses of one
    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(lambda *_: _noted(opened))
    trace.on_connection_reuseconn.append(lambda *_: _noted(reused))

    async def status_on_one_connection(edge, session):
        async with session.get(edge.url + "/v2/public/app/manifests/v1") as r:
            return r.status, await r.read()

    async with FaultyUpstream({"public/app:v1": img}) as up:
        doc = make_config(tmp_path / "data", {"public.example": up.url}, default="public.example",
                          access={"networks": ["127.0.0.0/8"]})
        conn = aiohttp.TCPConnector(limit=1)              # one connection, kept alive
        async with EdgeServer(doc) as edge, \
                aiohttp.ClientSession(connector=conn, trace_configs=[trace]) as session:
            for _ in range(3):
                assert (await status_on_one_connection(edge, session))[0] == 200
            svc = edge.services
            await svc.access.reload(AccessConfig(networks=("10.0.0.0/8",)), svc.config.upstreams)
            status, body = await status_on_one_connection(edge, session)
            assert status == 403 and json.loads(body)["errors"][0]["code"] == "DENIED"
            await svc.access.reload(AccessConfig(networks=("127.0.0.0/8",)), svc.config.upstreams)
            assert (await status_on_one_connection(edge, session))[0] == 200
    assert (len(opened), len(reused)) == (1, 4)          # all five on one connection


async def _noted(into):
    into.append(1)


async def test_tls_listener_and_client_certificates(tmp_path):
    certs = make_certs(tmp_path / "certs")
    img = make_image(73, layer_size=256 * 1024)
    async with FaultyUpstream({"private/app:v1": img}) as up:
        doc = make_config(tmp_path / "data", {}, default="private.example")
        doc["upstreams"] = {"private.example": {"url": up.url, "username": "r", "password": "x"}}
        doc["tls"] = {"cert_file": str(certs.server_cert), "key_file": str(certs.server_key),
                      "client_ca_file": str(certs.ca)}
        edge = EdgeServer(doc)
        edge.url = edge.url.replace("http://", "https://")
        async with edge:
            trust = ssl.create_default_context(cafile=str(certs.ca))
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as s:
                # TLS, no client certificate: anonymous, so the private upstream says 401.
                assert (await get(edge, s, "/v2/private/app/manifests/v1"))[0] == 401
            with_cert = ssl.create_default_context(cafile=str(certs.ca))
            with_cert.load_cert_chain(str(certs.client_cert), str(certs.client_key))
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=with_cert)) as s:
                status, _, body = await get(edge, s, f"/v2/private/app/blobs/{img.layers[0].digest}")
                assert status == 200 and body == img.layers[0].data      # over TLS: the copy path
                assert (await get(edge, s, f"/v2/private/app/blobs/{img.layers[0].digest}"))[2] == img.layers[0].data
            sender = edge.services.sender
            assert sender.sendfile_bytes == 0 and sender.copied_bytes >= 2 * img.layers[0].size


def test_skopeo_authenticates_to_the_mirror_with_basic_credentials(tmp_path, registry):
    require_binaries("skopeo")
    img = make_image(74, layer_size=128 * 1024)
    digest = push(registry.url, "private/app", "v1", img)
    (tmp_path / "htpasswd").write_text(
        "alice:" + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode() + "\n")
    doc = make_config(tmp_path / "data", {}, default="private.example")
    doc["upstreams"] = {"private.example": {"url": registry.url, "username": "robot", "password": "x"},
                        "public.example": {"url": registry.url}}
    doc["access"] = {"htpasswd": str(tmp_path / "htpasswd")}
    with EdgeProcess(tmp_path, doc) as edge:
        host = edge.url.removeprefix("http://")
        src = f"docker://{host}/private/app:v1"
        r = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", src],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "401" in r.stderr + r.stdout or "unauthorized" in (r.stderr + r.stdout).lower()
        r = subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--src-creds", "alice:s3cret",
                            src, f"oci:{tmp_path / 'out'}:v1"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        index = json.loads((tmp_path / "out" / "index.json").read_text())
        assert index["manifests"][0]["digest"] == digest
        # Anonymous clients still pull from a public upstream (the /v2/ challenge does not stop them).
        r = subprocess.run(["skopeo", "copy", "--src-tls-verify=false",
                            f"docker://{host}/public.example/private/app:v1", f"oci:{tmp_path / 'pub'}:v1"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr


async def test_status_sync_progress_and_metrics_need_credentials(world):
    up, edge, img, session = world
    for path in ("/_edgecache/status", "/_edgecache/sync", "/metrics"):
        status, _, body = await get(edge, session, path)
        assert status == 401 and json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED", path
        status, _, body = await get(edge, session, path, Authorization="Bearer tok-abc123")
        assert status == 200, path
    assert (await get(edge, session, "/_edgecache/health"))[0] == 200      # liveness stays open


@pytest.mark.parametrize("with_credentials", [False, True])
async def test_status_of_a_private_upstream_is_never_shown_to_anonymous_clients(tmp_path, with_credentials):
    """With a private upstream and no client credentials at all (only certificates, or
    nobody), status and metrics still name private images: anonymous clients get 401.
    With public upstreams only and no credentials, they stay open."""
    img = make_image(75, layer_size=1024)
    async with FaultyUpstream({"private/app:v1": img}) as up:
        doc = make_config(tmp_path / "data", {"public.example": up.url}, default="public.example")
        if with_credentials:
            doc["upstreams"]["private.example"] = {"url": up.url, "username": "r", "password": "x"}
        async with EdgeServer(doc) as edge, aiohttp.ClientSession() as session:
            for path in ("/_edgecache/status", "/metrics", "/_edgecache/sync"):
                assert (await get(edge, session, path))[0] == (401 if with_credentials else 200)


async def test_access_admin_names_who_may_run_gc_verify_and_sync(tmp_path):
    (tmp_path / "htpasswd").write_text(
        "alice:" + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode() + "\n")
    (tmp_path / "tokens").write_text("node-1:tok-abc123\nops:tok-ops\n")
    img = make_image(76, layer_size=1024)
    async with FaultyUpstream({"public/app:v1": img}) as up:
        doc = make_config(tmp_path / "data", {"public.example": up.url}, default="public.example",
                          access={"htpasswd": str(tmp_path / "htpasswd"), "tokens_file": str(tmp_path / "tokens"),
                                  "admin": ["alice", "ops"]})
        async with EdgeServer(doc) as edge, aiohttp.ClientSession() as session:
            for path in ("/_edgecache/gc", "/_edgecache/verify", "/_edgecache/sync", "/_edgecache/export"):
                for auth, want in ((None, 401), ("Bearer tok-abc123", 403), ("Bearer tok-ops", (200, 202)),
                                   (basic("alice", "s3cret"), (200, 202))):
                    async with session.post(edge.url + path, headers={"Authorization": auth} if auth else {}) as r:
                        assert r.status in (want if isinstance(want, tuple) else (want,)), (path, auth, r.status)
                        if r.status >= 400:
                            assert (await r.json())["errors"][0]["code"] in ("UNAUTHORIZED", "DENIED")
            # A node's token still pulls and reads status: it only may not administer.
            status, _, _ = await get(edge, session, "/_edgecache/status", Authorization="Bearer tok-abc123")
            assert status == 200


async def test_reload_revokes_a_removed_user_and_token(tmp_path):
    from edgecache.server.reload import reload
    htpasswd, tokens = tmp_path / "htpasswd", tmp_path / "tokens"
    htpasswd.write_text("alice:" + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode() + "\n")
    tokens.write_text("node-1:tok-abc123\n")
    img = make_image(77, layer_size=1024)
    async with FaultyUpstream({"private/app:v1": img}) as up:
        doc = make_config(tmp_path / "data", {}, default="private.example",
                          access={"htpasswd": str(htpasswd), "tokens_file": str(tokens)})
        doc["upstreams"] = {"private.example": {"url": up.url, "username": "r", "password": "x"}}
        (tmp_path / "edgecache.yaml").write_text(__import__("yaml").safe_dump(doc))
        from edgecache.config import load
        edge = EdgeServer(config=load(tmp_path / "edgecache.yaml"))
        async with edge, aiohttp.ClientSession() as session:
            path = f"/v2/private/app/blobs/{img.layers[0].digest}"
            for auth in (basic("alice", "s3cret"), "Bearer tok-abc123"):
                assert (await get(edge, session, path, Authorization=auth))[0] == 200
            # The operator removes alice and the node's token, and reloads (SIGHUP runs it
            # in a task of its own).
            htpasswd.write_text("# nobody\n")
            tokens.write_text("node-2:tok-new\n")
            await asyncio.ensure_future(reload(edge.services))
            for auth in (basic("alice", "s3cret"), "Bearer tok-abc123"):
                assert (await get(edge, session, path, Authorization=auth))[0] == 401, auth
            assert (await get(edge, session, path, Authorization="Bearer tok-new"))[0] == 200


def test_credentials_in_an_upstream_url_are_refused_and_never_echoed(tmp_path):
    from edgecache.config import ConfigError, build
    with pytest.raises(ConfigError) as e:
        build({"upstreams": {"harbor.example": {"url": "https://robot:hunter2@harbor.example"}}},
              source="x", env={}, uid=1000)
    assert e.value.key == "upstreams.harbor.example.url"
    assert "hunter2" not in str(e.value) and "username and password_file" in str(e.value)


def test_edgecache_gc_against_a_daemon_with_credentials(tmp_path):
    import sys
    (tmp_path / "htpasswd").write_text(
        "alice:" + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode() + "\n")
    (tmp_path / "cli-creds").write_text("# for edgecache gc/verify/sync\nalice:s3cret\n")
    (tmp_path / "wrong-creds").write_text("alice:nope\n")
    img = make_image(78, layer_size=1024)
    with FaultyUpstream.in_thread({"public/app:v1": img}) as up:
        doc = make_config(tmp_path / "data", {"public.example": up.url}, default="public.example",
                          access={"htpasswd": str(tmp_path / "htpasswd"),
                                  "cli_credentials_file": str(tmp_path / "cli-creds")})
        with EdgeProcess(tmp_path, doc) as edge:
            def cli(*extra):
                return subprocess.run([sys.executable, "-m", "edgecache", *extra, "--config",
                                       str(edge.config_path)], capture_output=True, text=True, timeout=60)
            r = cli("gc", "--json")
            assert r.returncode == 0, r.stderr
            assert "evicted" in json.loads(r.stdout)
            r = cli("verify", "--json")
            assert r.returncode == 0 and json.loads(r.stdout)["bad"] == [], r.stderr
            r = cli("gc", "--credentials-file", str(tmp_path / "wrong-creds"))
            assert r.returncode == 1 and "refused the credentials" in r.stderr
            assert "Traceback" not in r.stderr
            # Without any credentials: told what to set, not a traceback.
            bare = dict(doc, access={"htpasswd": str(tmp_path / "htpasswd")})
            (tmp_path / "bare.yaml").write_text(__import__("yaml").safe_dump(bare))
            r = subprocess.run([sys.executable, "-m", "edgecache", "gc", "--config", str(tmp_path / "bare.yaml")],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 1 and "cli_credentials_file" in r.stderr and "Traceback" not in r.stderr


def test_password_check_queues_are_per_address_and_per_ipv6_64():
    from edgecache.passwords import client_key
    assert client_key("10.0.0.7") == "10.0.0.7"
    assert client_key("::ffff:10.0.0.7") == "10.0.0.7"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("fe80::1%eth0") == "fe80::/64"
