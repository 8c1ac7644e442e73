"""Tag lists: one page at a time from the upstream (limits.tag_list_tags tags and
limits.tag_list_bytes at most, `n` and `last` honoured), and the last whole list
kept so it can be answered offline, whole or page by page.

The next page's Link always points back at this mirror: built from the query of the
upstream's own Link (some registries page by an opaque token, Quay's `next_page`),
or from `n` and `last` where the page was cut here; the upstream's host is never
passed on. A next page that would ask the same again is not offered.
"""
from __future__ import annotations

import asyncio
import json
import re
from typing import Mapping

from yarl import URL

from edgecache.errors import (NameUnknown, UpstreamBadResponse, UpstreamError,
                              UpstreamNotFound, is_unavailable)
from edgecache.metrics import Metrics
from edgecache.pull.routing import Route
from edgecache.store.meta import MetaStore
from edgecache.upstream.client import Upstreams

MAX_LAST = 256          # a `last` longer than any tag (128) is no tag
MAX_PARAMS = 8          # query parameters passed to the upstream (n, last, a page token)
MAX_PARAM = 512         # characters in one of them


def _n(value: str | None) -> int | None:
    """The client's `n`: ASCII digits, else as if not given."""
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 9:
        return None
    return int(value)


def _page(tags: list[str], n: int, last: str | None) -> tuple[list[str], bool]:
    """The tags after `last`, at most n; and whether more follow."""
    if last is not None:
        tags = [t for t in tags if t > last]
    return tags[:n], len(tags) > n


def _bounded(params: Mapping[str, str]) -> dict[str, str] | None:
    """What of a query goes to the upstream (never `ns`: that is ours); None when
    anything else would have to be left out (a page token cut off asks for page 1)."""
    out: dict[str, str] = {}
    for k, v in params.items():
        if k == "ns":
            continue
        if len(out) >= MAX_PARAMS or len(k) > 64 or len(v) > MAX_PARAM:
            return None
        out[k] = v
    return out


def next_from_link(link: str | None, path: str = r"/tags/list$") -> dict[str, str] | None:
    """The query of the upstream's `Link: <URL>; rel="next"` (of several links, the
    next one; of any host, only its query is kept, and only for a path that
    matches `path`: the same API), or None."""
    for part in (link or "").split(","):
        target, _, attrs = part.strip().partition(";")
        rels = attrs.replace(" ", "").replace("'", '"').lower()
        if 'rel="next"' not in rels and "rel=next" not in rels:
            continue
        target = target.strip()
        if not (target.startswith("<") and target.endswith(">")):
            return None
        try:
            url = URL(target[1:-1])
        except ValueError:
            return None
        if not re.search(path, url.path):
            return None
        return _bounded(url.query) or None
    return None


def _parse(upstream: str, body: bytes) -> tuple[str, list[str]]:
    try:
        doc = json.loads(body)
    except ValueError:
        raise UpstreamBadResponse(upstream, 200, "tag list is not JSON") from None
    tags = doc.get("tags") if isinstance(doc, dict) else None
    if tags is None and isinstance(doc, dict):
        tags = []                               # Distribution sends null for none
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags) or \
            not isinstance(doc.get("name", ""), str):
        raise UpstreamBadResponse(upstream, 200, "tag list is not {name, tags}")
    return doc.get("name", ""), tags


class TagListService:
    def __init__(self, meta: MetaStore, upstreams: Upstreams, metrics: Metrics, *,
                 max_tags: int = 10_000) -> None:
        self.meta = meta
        self.upstreams = upstreams
        self.metrics = metrics
        self.max_tags = max_tags

    async def get(self, route: Route, params: Mapping[str, str]
                  ) -> tuple[bytes, str, dict[str, str] | None]:
        """The body, its source ("upstream", or "local" when the upstream failed) and
        the query of the next page, if there is one."""
        asked = _n(params.get("n"))
        n = self.max_tags if asked is None else min(asked, self.max_tags)
        last = params.get("last")
        if last is not None and len(last) > MAX_LAST:
            last = None
        # The client's own query goes on (a page token of the upstream's), bounded; n and
        # last as decided here. A query too big to pass whole is n and last alone.
        query = {**(_bounded(params) or {}), "n": str(n)}
        query.pop("last", None)
        if last is not None:
            query["last"] = last
        client = self.upstreams.get(route.upstream)
        try:
            body, link = await client.tags_list(route.repo, query)
        except UpstreamNotFound:
            raise NameUnknown(route.repo) from None
        except UpstreamError as e:
            cached = self.meta.tag_list(route.upstream, route.repo)
            if cached is None or not is_unavailable(e):
                raise
            self.metrics.stale(route.upstream, f"tag list of {route.repo}")
            name, tags = _parse(route.upstream, cached)
            page, more = _page(tags, n, last)
            body, next_query = self._answer(name, page, more, asked or n)
            return body, "local", next_query
        # A page of some MiB: parsed off the loop.
        name, tags = await asyncio.to_thread(_parse, route.upstream, body) if len(body) > 65536 \
            else _parse(route.upstream, body)
        theirs = next_from_link(link)
        if len(tags) > n:                      # an upstream that ignored n: cut here
            tags, theirs = tags[:n], None
            body, next_query = self._answer(name, tags, True, asked or n)
        else:
            body, next_query = self._answer(name, tags, bool(link), asked or n)
            if theirs is not None:
                next_query = theirs
        if next_query == query:
            next_query = None                  # no page twice: an upstream ignoring `last`
        if set(params) <= {"ns"} and next_query is None and not link:
            self.meta.put_tag_list(route.upstream, route.repo, body)      # the whole list
        return body, "upstream", next_query

    @staticmethod
    def _answer(name: str, tags: list[str], more: bool,
                n: int) -> tuple[bytes, dict[str, str] | None]:
        body = json.dumps({"name": name, "tags": tags}).encode()
        return body, {"n": str(n), "last": tags[-1]} if more and tags else None
