"""upstream/auth.py: challenges as registries send them, and the token cache (one
fetch for all concurrent callers, early refresh, a caller gone cancels nothing)."""
import asyncio

from edgecache.upstream.auth import TokenCache, basic_header, parse_challenge


def test_challenges_as_registries_send_them():
    c = parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                        'scope="repository:library/alpine:pull"')
    assert c.scheme == "bearer" and c.params == {
        "realm": "https://auth.docker.io/token", "service": "registry.docker.io",
        "scope": "repository:library/alpine:pull"}
    assert parse_challenge('Basic realm="Harbor"').params == {"realm": "Harbor"}
    assert parse_challenge('Bearer realm="a \\"b\\"", service=plain').params == \
        {"realm": 'a \\"b\\"', "service": "plain"}
    assert parse_challenge("") is None and parse_challenge("   ") is None
    assert basic_header("robot$edge", "pw") == "Basic cm9ib3QkZWRnZTpwdw=="


async def test_one_fetch_for_every_concurrent_caller_and_reuse_until_near_expiry():
    now = [0.0]
    cache = TokenCache(clock=lambda: now[0])
    calls = []

    async def fetcher():
        calls.append(now[0])
        await asyncio.sleep(0.05)
        return f"t{len(calls)}", 60

    got = await asyncio.gather(*(cache.fetch("s", fetcher) for _ in range(20)))
    assert got == ["t1"] * 20 and len(calls) == 1
    now[0] = 60 - TokenCache.MARGIN - 1
    assert cache.get("s") == "t1"
    now[0] = 60 - TokenCache.MARGIN + 1          # refreshed a little before it expires
    assert cache.get("s") is None
    assert await cache.fetch("s", fetcher) == "t2" and cache.get("other") is None


async def test_a_caller_that_goes_away_does_not_cancel_the_fetch_for_the_others():
    cache = TokenCache()
    started = asyncio.Event()

    async def fetcher():
        started.set()
        await asyncio.sleep(0.1)
        return "tok", 300

    first = asyncio.create_task(cache.fetch("s", fetcher))
    await started.wait()
    second = asyncio.create_task(cache.fetch("s", fetcher))
    first.cancel()
    assert await second == "tok" and cache.get("s") == "tok"
