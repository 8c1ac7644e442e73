"""server/whole_answer.py on real sockets: byte for byte what aiohttp's Response
sends for the same answer (but the date), for GET and HEAD, HTTP/1.1 and 1.0, kept
alive or closed; pipelined requests; a client that reads late; headers that would
split the answer refused."""
import asyncio
import os
import re

import pytest
import uvloop
from aiohttp import web
from aiohttp.http_writer import _py_serialize_headers
from multidict import CIMultiDict

from edgecache.server.whole_answer import WholeAnswer
from tests.support.edge import EdgeServer, make_config
from tests.support.httpserver import HttpServer

LOOP_FACTORIES = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}

BODY = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
HEADERS = {"Docker-Distribution-API-Version": "registry/2.0",
           "Docker-Content-Digest": "sha256:" + "ab" * 32, "X-Edgecache-Source": "local",
           "Content-Type": "application/vnd.oci.image.manifest.v1+json"}
BIG = os.urandom(1 << 20)
DATE = re.compile(rb"\r\nDate: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT\r\n")


def _server(buffered: list[int] | None = None) -> HttpServer:
    async def reference(request: web.Request) -> web.Response:
        return web.Response(body=BODY, headers=HEADERS)

    async def whole(request: web.Request) -> web.StreamResponse:
        return WholeAnswer(BODY, HEADERS)

    async def big(request: web.Request) -> web.StreamResponse:
        if buffered is not None:          # what earlier answers left unsent
            buffered.append(request.transport.get_write_buffer_size())
        return WholeAnswer(BIG, {"Content-Type": "application/octet-stream"})
    return HttpServer([web.get("/reference", reference), web.get("/whole", whole),
                       web.get("/big", big)])


async def _read_answer(reader: asyncio.StreamReader, head_only: bool) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    m = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
    n = int(m.group(1)) if m and not head_only else 0
    return head + await asyncio.wait_for(reader.readexactly(n), 10)


async def _exchange(port: int, request: bytes, answers: list[bool], *,
                    wait: float = 0.0) -> tuple[list[bytes], bytes]:
    """Send `request` (one or more heads), read one answer per `answers` entry (True:
    a HEAD's), then whatever follows until the server closes or 0.3 s pass."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    await asyncio.sleep(wait)
    got = [await _read_answer(reader, h) for h in answers]
    try:
        rest = await asyncio.wait_for(reader.read(-1), 0.3)
    except asyncio.TimeoutError:
        rest = b"(still open)"
    writer.close()
    return got, rest


def _head(method: str, path: str, version: str, connection: str | None) -> bytes:
    extra = f"Connection: {connection}\r\n" if connection else ""
    return f"{method} {path} HTTP/{version}\r\nHost: x\r\n{extra}\r\n".encode()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("version,connection", [("1.1", None), ("1.1", "close"),
                                                ("1.0", None), ("1.0", "keep-alive")])
async def test_the_same_bytes_as_aiohttps_response(method, version, connection):
    async with _server() as srv:
        ref, ref_rest = await _exchange(srv.port, _head(method, "/reference", version, connection),
                                        [method == "HEAD"])
        got, got_rest = await _exchange(srv.port, _head(method, "/whole", version, connection),
                                        [method == "HEAD"])
    assert DATE.search(got[0]) and DATE.search(ref[0])
    assert DATE.sub(b"\r\nDate: -\r\n", got[0]) == DATE.sub(b"\r\nDate: -\r\n", ref[0])
    kept = (version, connection) in (("1.1", None), ("1.0", "keep-alive"))
    assert got_rest == ref_rest == (b"(still open)" if kept else b"")
    assert got[0].endswith(b"\r\n\r\n" if method == "HEAD" else BODY)
    assert (b"Content-Length: %d\r\n" % len(BODY)) in got[0]


async def test_pipelined_requests_are_answered_in_order():
    heads = [("GET", "/whole"), ("HEAD", "/whole"), ("GET", "/reference"), ("GET", "/whole")]
    request = b"".join(_head(m, p, "1.1", None) for m, p in heads)
    async with _server() as srv:
        got, rest = await _exchange(srv.port, request, [m == "HEAD" for m, _ in heads])
    assert [a.endswith(BODY) for a in got] == [True, False, True, True]
    assert all(a.startswith(b"HTTP/1.1 200 OK\r\n") for a in got) and rest == b"(still open)"
    same = [DATE.sub(b"\r\nDate: -\r\n", a) for a in got]
    assert same[0] == same[2] == same[3]


async def test_a_client_that_reads_late_gets_every_byte():
    # 24 MiB asked for at once, not read for a while: each answer waits for the
    # transport's buffer to drain (as aiohttp's writer does) before the next is made.
    buffered: list[int] = []
    async with _server(buffered) as srv:
        got, rest = await _exchange(srv.port, _head("GET", "/big", "1.1", None) * 24,
                                    [False] * 24, wait=1.0)
    assert all(a.endswith(BIG) for a in got) and rest == b"(still open)"
    assert len(buffered) == 24 and max(buffered) < len(BIG), buffered


@pytest.mark.parametrize("value", ["a\r\nSet-Cookie: x=1", "a\nb", "a\rb", "app/\x00x", "app/\x0bx",
                                   "app/\x7fx"])
def test_a_header_aiohttp_would_refuse_is_refused(value):
    with pytest.raises(ValueError, match="cannot be sent"):
        WholeAnswer(BODY, {**HEADERS, "Content-Type": value})
    with pytest.raises(ValueError):           # as aiohttp's own serialiser does
        _py_serialize_headers("HTTP/1.1 200 OK", CIMultiDict({"Content-Type": value}))


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("body,media_type", [(b"", "application/json"),
                                             (BODY, "application/vnd.\u00e9t\u2028\t+json")])
async def test_odd_answers_are_sent_as_aiohttp_sends_them(method, body, media_type):
    # An empty body (HEAD: no Content-Length) and a media type beyond latin-1 (UTF-8).
    headers = {**HEADERS, "Content-Type": media_type}

    async def reference(request):
        return web.Response(body=body, headers=headers)

    async def whole(request):
        return WholeAnswer(body, headers)
    async with HttpServer([web.get("/reference", reference), web.get("/whole", whole)]) as srv:
        ref, _ = await _exchange(srv.port, _head(method, "/reference", "1.1", None), [method == "HEAD"])
        got, _ = await _exchange(srv.port, _head(method, "/whole", "1.1", None), [method == "HEAD"])
    assert DATE.sub(b"\r\nDate: -\r\n", got[0]) == DATE.sub(b"\r\nDate: -\r\n", ref[0])


async def test_an_answer_changed_after_it_was_made_is_refused_not_sent_otherwise():
    async def changed(request):
        resp = WholeAnswer(BODY, HEADERS)
        resp.set_status(404)
        return resp
    async with HttpServer([web.get("/changed", changed)]) as srv:
        with pytest.raises(asyncio.IncompleteReadError) as e:     # closed, nothing sent
            await _exchange(srv.port, _head("GET", "/changed", "1.1", None), [False])
    assert e.value.partial == b""


def test_a_block_too_large_to_keep_is_made_each_time():
    from edgecache.server import whole_answer
    huge = "application/" + "x" * 4000
    WholeAnswer(BODY, {"Content-Type": huge})
    WholeAnswer(BODY, {"Content-Type": "application/once"}, keep=False)
    kept = {k[0][1] for k in whole_answer._blocks}
    assert huge not in kept and "application/once" not in kept
    WholeAnswer(BODY, {"Content-Type": "application/kept"})
    assert "application/kept" in {k[0][1] for k in whole_answer._blocks}


async def test_edgecache_has_no_prepare_signal_these_answers_would_skip(tmp_path):
    async with EdgeServer(make_config(tmp_path / "data", {"central.example": "http://127.0.0.1:9"})) as edge:
        assert len(edge.app.on_response_prepare) == 0
