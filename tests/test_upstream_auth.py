"""Upstream credentials go only to the upstream's origin and the token realms its
configuration names: a realm on another host is asked without them, a realm over
plain http for an https upstream is refused, and a challenge that arrives after a
redirect to another host is not answered with them. The upstream here is a server
of our own that challenges and redirects as told; a second host (127.0.0.2) plays
the foreign token service and the CDN, and records every Authorization it sees."""
from __future__ import annotations

import base64
import json
import secrets
import ssl

import aiohttp
import pytest
from aiohttp import web

from tests.support.certs import make_certs
from tests.support.edge import EdgeServer, make_config
from tests.support.images import make_image
from tests.support.httpserver import HttpServer

ROBOT = "Basic " + base64.b64encode(b"robot:robot-pw").decode()


class Realm:
    """A token service: a token for anyone (anonymous ones too, as Docker Hub's)."""

    def __init__(self) -> None:
        self.issued: dict[str, str | None] = {}     # token -> the Authorization it was asked with

    async def token(self, request):
        tok = secrets.token_hex(8)
        self.issued[tok] = request.headers.get("Authorization")
        return web.json_response({"token": tok, "expires_in": 300})


def registry_routes(img, realm_url: str, realm: Realm, *, redirect_to: str | None = None):
    """A registry that wants a token from realm_url and serves img as demo/app:v1;
    with redirect_to, blob GETs are redirected there (as to a CDN)."""
    blobs = {b.digest: b for b in img.blobs}

    def authorized(request) -> bool:
        h = request.headers.get("Authorization", "")
        return h.startswith("Bearer ") and h[7:] in realm.issued

    def challenge():
        return web.json_response(
            {"errors": [{"code": "UNAUTHORIZED", "message": "auth"}]}, status=401,
            headers={"WWW-Authenticate": f'Bearer realm="{realm_url}",service="reg",'
                                         'scope="repository:demo/app:pull"'})

    async def manifest(request):
        if not authorized(request):
            return challenge()
        m = img.manifest_blob()
        return web.Response(body=m.data, headers={"Content-Type": m.media_type,
                                                  "Docker-Content-Digest": m.digest})

    async def blob(request):
        if not authorized(request):
            return challenge()
        d = request.match_info["digest"]
        if redirect_to:
            raise web.HTTPTemporaryRedirect(f"{redirect_to}/cdn/{d}")
        return web.Response(body=blobs[d].data, headers={"Docker-Content-Digest": d})

    async def base(request):
        return web.json_response({})

    return [web.get("/v2/", base),
            web.get("/v2/demo/app/manifests/{ref}", manifest),
            web.get("/v2/demo/app/blobs/{digest}", blob)]


def cache_doc(tmp_path, url, **upstream):
    doc = make_config(tmp_path / "data", {}, default="reg.example")
    doc["upstreams"] = {"reg.example": {"url": url, "username": "robot", "password": "robot-pw",
                                        "public": True, **upstream}}
    return doc


async def get(session, url):
    async with session.get(url) as r:
        return r.status, await r.read()


@pytest.mark.parametrize("host", ["127.0.0.2", "127.0.0.1"])
@pytest.mark.parametrize("named", [False, True])
async def test_a_realm_on_another_origin_gets_the_credentials_only_when_named(tmp_path, named, host):
    """Another host, or another port of the upstream's host: not the upstream's origin."""
    img = make_image(120, layers=1, layer_size=1024)
    realm = Realm()
    async with HttpServer([web.get("/token", realm.token)], host) as auth:
        async with HttpServer(registry_routes(img, f"{auth.url}/token", realm), "127.0.0.1") as reg:
            extra = {"token_realms": [f"{auth.url}/token"]} if named else {}
            async with EdgeServer(cache_doc(tmp_path, reg.url, **extra)) as edge, \
                    aiohttp.ClientSession() as s:
                st, body = await get(s, f"{edge.url}/v2/demo/app/manifests/v1")
                assert st == 200 and body == img.manifest_blob().data
        sent = [a for _, p, a in auth.seen if p == "/token"]
        assert sent, "the realm was asked for a token"
        assert all(a == ROBOT for a in sent) if named else all(a is None for a in sent)


async def test_a_plain_http_realm_for_an_https_upstream_is_refused(tmp_path, caplog):
    certs = make_certs(tmp_path / "certs")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(certs.server_cert), str(certs.server_key))
    img = make_image(121, layers=1, layer_size=1024)
    realm = Realm()
    async with HttpServer([web.get("/token", realm.token)], "127.0.0.1") as auth:   # same host, http
        async with HttpServer(registry_routes(img, f"{auth.url}/token", realm), "127.0.0.1", ctx) as reg:
            doc = cache_doc(tmp_path, reg.url, tls={"ca_file": str(certs.ca)},
                            token_realms=[f"{auth.url}/token"])
            async with EdgeServer(doc) as edge, aiohttp.ClientSession() as s:
                with caplog.at_level("WARNING", logger="edgecache.server"):
                    st, body = await get(s, f"{edge.url}/v2/demo/app/manifests/v1")
                # The client hears which upstream failed and how; the log says why.
                assert st >= 500 and json.loads(body)["errors"][0]["detail"] == {
                    "upstream": "reg.example", "reason": "bad_response"}
                assert any("plain http" in r.getMessage() for r in caplog.records)
        assert auth.seen == []                # never asked, with or without credentials


async def test_a_challenge_after_a_redirect_to_another_host_is_not_answered_with_credentials(tmp_path):
    img = make_image(122, layers=1, layer_size=1024)
    layer = img.layers[0]
    realm, cdn_realm = Realm(), Realm()

    async def cdn_blob(request):
        # The CDN wants credentials of its own, from a realm on its host.
        return web.json_response({"errors": [{"code": "UNAUTHORIZED", "message": "x"}]}, status=401,
                                 headers={"WWW-Authenticate": f'Bearer realm="http://127.0.0.2:{cdn.port}/token"'})
    cdn = HttpServer([web.get("/cdn/{digest}", cdn_blob), web.get("/token", cdn_realm.token)], "127.0.0.2")
    async with cdn, HttpServer([web.get("/token", realm.token)], "127.0.0.1") as auth:
        routes = registry_routes(img, f"{auth.url}/token", realm, redirect_to=cdn.url)
        async with HttpServer(routes, "127.0.0.1") as reg:
            doc = cache_doc(tmp_path, reg.url, token_realms=[f"{auth.url}/token"])
            async with EdgeServer(doc) as edge, aiohttp.ClientSession() as s:
                st, _ = await get(s, f"{edge.url}/v2/demo/app/blobs/{layer.digest}")
                assert st == 403          # the upstream denied us (UpstreamDenied): DENIED
        assert cdn.seen and all(a is None for _, _, a in cdn.seen)   # nothing leaked
        assert cdn_realm.issued == {}        # its challenge was not answered
        assert any(a == ROBOT for _, _, a in auth.seen)      # the upstream's named realm: yes


async def test_a_token_realm_named_on_loopback_is_reached_when_the_upstream_is_there(tmp_path):
    """Token fetches share the connector's resolver that guards redirects: a realm by
    name on the upstream's own loopback must still be reached (without any redirect first)."""
    img = make_image(123, layers=1, layer_size=1024)
    realm = Realm()
    async with HttpServer([web.get("/token", realm.token)], "127.0.0.1") as auth:
        named = auth.url.replace("127.0.0.1", "localhost")
        async with HttpServer(registry_routes(img, f"{named}/token", realm), "127.0.0.1") as reg:
            doc = cache_doc(tmp_path, reg.url, token_realms=[f"{named}/token"])
            async with EdgeServer(doc) as edge, aiohttp.ClientSession() as s:
                st, body = await get(s, f"{edge.url}/v2/demo/app/manifests/v1")
                assert st == 200, body
        assert any(p == "/token" for _, p, _ in auth.seen)
