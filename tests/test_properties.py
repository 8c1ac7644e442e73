"""Property-based tests over the request surface: whatever the name, reference,
digest, Range, ns or query, the answer is a proper one (an OCI error body for
every error), nothing is written outside data_dir, and the server keeps serving."""
import http.client
import json
import os
import string
import urllib.parse

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.support.edge import EdgeProcess, make_config
from tests.support.faulty import FaultyUpstream
from tests.support.images import make_image

OCI_CODES = {"BLOB_UNKNOWN", "DIGEST_INVALID", "MANIFEST_UNKNOWN", "MANIFEST_INVALID", "NAME_INVALID",
             "NAME_UNKNOWN", "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS", "UNKNOWN",
             "RANGE_INVALID"}
IMG = make_image(81, layer_size=4096)
FAKE_UPSTREAM = None        # the module's fault upstream, for tests that add to it


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("props")
    global FAKE_UPSTREAM
    with FaultyUpstream.in_thread({"demo/app:v1": IMG}) as up:
        FAKE_UPSTREAM = up
        doc = make_config(base / "data", {"central.example": up.url, "docker.io": up.url},
                          default="central.example")
        with EdgeProcess(base, doc) as edge:
            yield edge, base


def snapshot(base):
    """Every path under the test's directory, except inside data_dir and our own logs."""
    out = set()
    for root, dirs, files in os.walk(base):
        rel = os.path.relpath(root, base)
        if rel == "data" or rel.startswith("data" + os.sep):
            continue
        out.update(os.path.join(rel, f) for f in files + dirs)
    return out


def request(edge, method, path, headers=None):
    host, port = edge.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def check_answer(method, status, headers, body):
    assert status < 500 or status in (502, 503), (status, body[:300])
    if status >= 400 and method != "HEAD":
        doc = json.loads(body)
        assert doc["errors"] and doc["errors"][0]["code"] in OCI_CODES, body[:300]


segment = st.text(alphabet=string.ascii_letters + string.digits + "._-%~:@!$&'()*+,;=", min_size=0,
                  max_size=40)
names = st.one_of(
    st.lists(segment, min_size=1, max_size=6).map("/".join),
    st.sampled_from(["demo/app", "..", "demo/../../etc", "%2e%2e/%2e%2e/etc", "demo/%2Fetc", "A/B",
                     "a" * 300, "ü/x", "demo/app/", "/demo", "demo//app", "central.example/demo/app",
                     "docker.io/library/x"]))
refs = st.one_of(
    segment,
    st.sampled_from(["v1", "latest", IMG.digest, "sha256:" + "0" * 64, "sha256:zz", "md5:" + "a" * 32,
                     "sha512:" + "a" * 128, "sha256:" + "A" * 64, "sha256:" + "a" * 63, "-x", ".." ]),
    st.text(alphabet="abcdef0123456789", min_size=0, max_size=70).map(lambda h: "sha256:" + h))
ranges = st.one_of(st.none(), st.sampled_from(["bytes=0-0", "bytes=-1", "bytes=5-", "bytes=999999-",
                                               "bytes=0-1,3-4", "bytes=x-y", "bytes=9-1", "items=0-1",
                                               "bytes=" + "9" * 40 + "-"]),
                   st.text(max_size=30))
ns = st.one_of(st.none(), st.sampled_from(["central.example", "docker.io", "evil.example", "", "..",
                                           "registry-1.docker.io"]), segment)
kinds = st.sampled_from(["manifests", "blobs", "tags/list", "nothing"])
methods = st.sampled_from(["GET", "HEAD", "GET", "POST", "PUT", "DELETE", "PATCH"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(method=methods, name=names, kind=kinds, ref=refs, rng=ranges, ns=ns,
       extra=st.dictionaries(segment, segment, max_size=3))
def test_any_request_gets_a_proper_answer_and_nothing_escapes_data_dir(server, method, name, kind, ref,
                                                                      rng, ns, extra):
    edge, base = server
    path = f"/v2/{name}/{kind}" + (f"/{ref}" if kind in ("manifests", "blobs") else "")
    query = dict(extra)
    if ns is not None:
        query["ns"] = ns
    if query:
        path += "?" + urllib.parse.urlencode(query)
    assume(all(32 < ord(c) < 127 for c in path))
    headers = {"Host": "x"}
    if rng is not None:
        assume(all(32 <= ord(c) < 127 for c in rng))
        headers["Range"] = rng
    before = snapshot(base)
    status, h, body = request(edge, method, path, headers)
    check_answer(method, status, h, body)
    assert snapshot(base) == before
    if method in ("POST", "PUT", "DELETE", "PATCH") and kind != "nothing":
        assert status in (400, 404, 405)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["X-Long", "Accept", "Range", "Authorization"]),
       size=st.integers(min_value=1, max_value=20000))
def test_oversized_headers_are_refused_and_the_server_keeps_serving(server, name, size):
    edge, _ = server
    try:
        status, _, _ = request(edge, "GET", "/v2/demo/app/manifests/v1", {"Host": "x", name: "a" * size})
        assert status < 500
    except (ConnectionError, http.client.HTTPException):
        pass                 # closing the connection on a huge header is a fine answer too
    assert request(edge, "GET", "/v2/", {"Host": "x"})[0] == 200


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.one_of(st.integers(min_value=4 * 1024 * 1024 - 64, max_value=4 * 1024 * 1024 + 64),
                      st.integers(min_value=100, max_value=9 * 1024 * 1024)))
def test_manifests_over_4_mib_are_refused(server, size):
    from tests.support.images import OCI_INDEX, ImageIndex
    edge, _ = server
    body = b'{"schemaVersion": 2, "mediaType": "' + OCI_INDEX.encode() + b'", "manifests": [], "x": "'
    body += b"y" * max(0, size - len(body) - 2) + b'"}'
    tag = f"s{size}"
    FAKE_UPSTREAM.add(f"demo/app:{tag}", ImageIndex(body, OCI_INDEX, ()))
    status, _, reply = request(edge, "GET", f"/v2/demo/app/manifests/{tag}",
                               {"Host": "x", "Accept": OCI_INDEX})
    if len(body) <= 4 * 1024 * 1024:
        assert status == 200 and reply == body
    else:
        assert status == 502 and json.loads(reply)["errors"][0]["code"] == "MANIFEST_INVALID"
    assert request(edge, "GET", "/v2/", {"Host": "x"})[0] == 200
