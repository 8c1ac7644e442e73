"""server/accesslog.py: the access line is what json.dumps of its fields would give,
byte for byte, whatever the path holds; a real `edgecache serve` writes one line per
request to its stdout (a file here), through the LineSink's thread."""
import json
import urllib.request

from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from edgecache.server.accesslog import _timestamp, access_line
from tests.support.edge import EdgeProcess, make_config


def _reference(now, method, url, status, nbytes, source, duration, remote, stale, error, rid):
    line = {"time": _timestamp(now), "method": method, "path": str(url)[:512], "status": status,
            "bytes": nbytes, "source": source, "duration_ms": round(duration * 1000, 3),
            "remote": remote}
    if stale:
        line["stale"] = True
    if error is not None:
        line["error"] = error
    if rid is not None:
        line["request_id"] = rid
    return json.dumps(line, separators=(",", ":"))


text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.floats(0, 4e9), text.filter(bool), text, st.integers(100, 599),
       st.one_of(st.none(), st.integers(0, 2**40)), text,
       st.floats(0, 1e4, allow_nan=False), st.one_of(st.none(), text), st.booleans(),
       st.one_of(st.none(), text), st.one_of(st.none(), text))
def test_the_line_is_json_dumps_of_its_fields(now, method, path, status, nbytes, source, duration,
                                               remote, stale, error, rid):
    url = URL.build(path="/" + path, encoded=False)
    fields = (now, method, url, status, nbytes, source, duration, remote, stale, error, rid)
    line = access_line(*fields)
    assert line == _reference(*fields)
    assert json.loads(line)["path"] == str(url)[:512]


@settings(max_examples=500, deadline=None)
@given(st.floats(0, 4e9))
def test_the_time_is_utc_to_the_millisecond(now):
    import datetime
    text = _timestamp(now)
    when = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()
    assert len(text) == 24 and 0 <= now - when < 0.0011


def test_quotes_backslashes_and_controls_are_escaped():
    for odd in ('a"b', "a\\b", "a\nb", "a\x7fb", "é", "\u2028", "\x00"):
        line = access_line(0.0, "GET", URL.build(path="/v2/x"), 200, 1, "local", 0.5, odd, False,
                           odd, None)
        assert json.loads(line)["remote"] == odd and json.loads(line)["error"] == odd
        assert line == _reference(0.0, "GET", URL.build(path="/v2/x"), 200, 1, "local", 0.5, odd,
                                  False, odd, None)


def test_a_served_process_logs_each_request_as_one_json_line(tmp_path):
    doc = make_config(tmp_path / "data", {"central.example": "http://127.0.0.1:9"},
                      default="central.example")
    paths = ["/v2/", '/v2/a%22b/manifests/%5Cx?ns=central.example', "/v2/caf%C3%A9/tags/list",
             "/nowhere"]
    with EdgeProcess(tmp_path, doc) as edge:
        for p in paths:
            try:
                urllib.request.urlopen(edge.url + p, timeout=10).read()
            except urllib.error.HTTPError as e:
                e.read()
        lines = edge.access_log()
    mine = [x for x in lines if x["path"] != "/_edgecache/health"]
    assert [x["path"] for x in mine] == [str(URL(p)) for p in paths]
    assert [x["status"] for x in mine] == [200, 400, 400, 404]
    assert [x.get("error") for x in mine] == [None, "NAME_INVALID", "NAME_INVALID", "NAME_UNKNOWN"]
    assert all(x["remote"] == "127.0.0.1" and x["duration_ms"] >= 0 for x in mine)


async def test_a_waiting_record_holds_at_most_its_lines_worth_of_a_long_url():
    """With stdout blocked, 16,384 records wait: each must hold the part of its URL its
    line shows, not an 8 KiB URL with its parsed query."""
    import logging
    import pickle

    import aiohttp
    from aiohttp import web

    from edgecache.server.accesslog import PATH_KEPT, JsonAccessLogger
    from edgecache.server.logsink import LineSink

    sink = LineSink(None, render=access_line)      # not started: records stay queued
    logger = logging.getLogger("test.accesslog.long")
    logger.addHandler(sink)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    app = web.Application()

    async def not_found(request):
        request.query.get("ns")              # as the registry handlers do: parsed, cached
        return web.Response(status=404)

    app.router.add_get("/{tail:.*}", not_found)
    runner = web.AppRunner(app, access_log_class=JsonAccessLogger, access_log=logger)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    long_path = "/v2/" + "a" * 7000 + "/manifests/x?ns=" + "b" * 1000
    many_params = "/v2/app/manifests/x?" + "&".join(f"p{i}=" for i in range(80))    # < 512
    try:
        async with aiohttp.ClientSession() as http:
            for path in (long_path, many_params, "/v2/short/manifests/x?ns=127.0.0.1"):
                async with http.get(f"http://127.0.0.1:{port}{path}") as r:
                    assert r.status == 404
    finally:
        await runner.cleanup()
        logger.removeHandler(sink)
    long_record, many_record, short_record = list(sink._lines)
    for record in (long_record, many_record):
        held = _deep_size(record)
        assert len(pickle.dumps(record)) < PATH_KEPT + 512 and held < 3 * PATH_KEPT, held
    assert json.loads(access_line(*many_record))["path"] == many_params
    assert json.loads(access_line(*long_record))["path"] == long_path[:PATH_KEPT]
    assert json.loads(access_line(*short_record))["path"] == "/v2/short/manifests/x?ns=127.0.0.1"


def _deep_size(obj) -> int:
    """Bytes held by obj and everything it reaches (types and modules aside)."""
    import gc
    import sys
    import types
    seen, todo, total = set(), [obj], 0
    while todo:
        o = todo.pop()
        if id(o) in seen or isinstance(o, (type, types.ModuleType, types.FunctionType)):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        todo.extend(gc.get_referents(o))
    return total
