"""server/guard.py at the door of a real aiohttp server: networks, tokens, the
operator paths, and hop requests (signed: served as a sibling for pulls only;
unsigned without a secret: an ordinary client)."""
import aiohttp
import pytest
from aiohttp import web

from edgecache.access import Access
from edgecache.config import AccessConfig, UpstreamConfig
from edgecache.server.endpoint import endpoint
from edgecache.server.guard import ACCESS, HOPS, OPERATOR, identity
from edgecache.server.oci_errors import DENIAL_LOG, DenialLog
from edgecache.siblings.hopauth import HopVerifier, sign
from tests.support.httpserver import HttpServer

SECRET = b"branch-secret-0123456789abcdef"
UPSTREAMS = {"pub.example": UpstreamConfig("pub.example", "http://127.0.0.1:1")}


async def whoami(request: web.Request) -> web.Response:
    who = identity(request)
    return web.json_response({"who": who.name if who else None, "how": who.method if who else None})


def _server(tmp_path, *, networks=(), secret=None) -> tuple[HttpServer, Access]:
    (tmp_path / "tokens").write_text("ci:tok-123\n")
    access = Access(AccessConfig(networks=tuple(networks), tokens_file=tmp_path / "tokens"),
                    UPSTREAMS)
    srv = HttpServer([web.get("/v2/{tail:.*}", endpoint(whoami)),
                      web.get("/_edgecache/status", endpoint(whoami, OPERATOR)),
                      web.post("/v2/{tail:.*}", endpoint(whoami))])
    srv.app[ACCESS] = access
    srv.app[DENIAL_LOG] = DenialLog()
    if secret:
        srv.app[HOPS] = HopVerifier(secret, "n2")
    return srv, access


async def _get(s, url, headers=None, method="GET"):
    async with s.request(method, url, headers=headers or {}) as r:
        return r.status, await r.json()


async def test_tokens_identify_and_operator_paths_need_an_identity(tmp_path):
    srv, access = _server(tmp_path)
    try:
        async with srv, aiohttp.ClientSession() as s:
            assert await _get(s, srv.url + "/v2/x") == (200, {"who": None, "how": None})
            assert await _get(s, srv.url + "/v2/x", {"Authorization": "Bearer tok-123"}) == \
                (200, {"who": "ci", "how": "token"})
            status, body = await _get(s, srv.url + "/v2/x", {"Authorization": "Bearer nope"})
            assert status == 401 and body["errors"][0]["code"] == "UNAUTHORIZED"
            status, body = await _get(s, srv.url + "/_edgecache/status")
            assert status == 401
            assert (await _get(s, srv.url + "/_edgecache/status",
                               {"Authorization": "Bearer tok-123"}))[0] == 200
    finally:
        access.close()


async def test_a_client_outside_the_networks_is_denied(tmp_path):
    srv, access = _server(tmp_path, networks=["10.0.0.0/8"])
    try:
        async with srv, aiohttp.ClientSession() as s:
            status, body = await _get(s, srv.url + "/v2/x", {"Authorization": "Bearer tok-123"})
            assert status == 403 and body["errors"][0]["code"] == "DENIED"
    finally:
        access.close()


@pytest.mark.parametrize("networks", [(), ("10.0.0.0/8",)])
async def test_a_signed_hop_is_a_sibling_whatever_its_network_for_pulls_only(tmp_path, networks):
    srv, access = _server(tmp_path, networks=networks, secret=SECRET)
    try:
        async with srv, aiohttp.ClientSession() as s:
            path = "/v2/app/blobs/x"
            ok = sign(SECRET, "n1", "n2", "GET", path)
            assert await _get(s, srv.url + path, ok) == (200, {"who": "n1", "how": "sibling"})
            assert (await _get(s, srv.url + path, ok))[0] == 401          # replayed
            assert (await _get(s, srv.url + path, sign(SECRET, "n1", "n3", "GET", path)))[0] == 401
            assert (await _get(s, srv.url + path, {"X-Edgecache-Hop": "bad id!"}))[0] == 401
            post = sign(SECRET, "n1", "n2", "POST", path)
            assert (await _get(s, srv.url + path, post, method="POST"))[0] == 403
            assert access.denied == 4
    finally:
        access.close()


async def test_without_a_secret_a_hop_is_checked_like_any_client(tmp_path):
    srv, access = _server(tmp_path, networks=["10.0.0.0/8"])
    try:
        async with srv, aiohttp.ClientSession() as s:
            assert (await _get(s, srv.url + "/v2/x", {"X-Edgecache-Hop": "n1"}))[0] == 403
    finally:
        access.close()


async def test_a_token_is_also_the_basic_password_of_its_name(tmp_path):
    """Clients that speak only Basic (containerd's registries.yaml configs, docker and
    podman login) send a token as NAME:TOKEN; only under its own name."""
    import base64

    def basic(cred: str) -> dict:
        return {"Authorization": "Basic " + base64.b64encode(cred.encode()).decode()}
    srv, access = _server(tmp_path)
    try:
        async with srv, aiohttp.ClientSession() as s:
            assert await _get(s, srv.url + "/v2/x", basic("ci:tok-123")) == \
                (200, {"who": "ci", "how": "token"})
            assert (await _get(s, srv.url + "/v2/x", basic("ci:tok-124")))[0] == 401
            assert (await _get(s, srv.url + "/v2/x", basic("someone:tok-123")))[0] == 401
            assert access.passwords.hashed == 0            # no bcrypt for a token
    finally:
        access.close()
