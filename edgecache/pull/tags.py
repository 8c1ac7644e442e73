"""Tag lists: passed through from the upstream, and the last full list kept
so it can be answered offline."""
from __future__ import annotations

from typing import Mapping

from edgecache.errors import NameUnknown, UpstreamNotFound, is_unavailable, UpstreamError
from edgecache.metrics import Metrics
from edgecache.pull.routing import Route
from edgecache.store.meta import MetaStore
from edgecache.upstream.client import Upstreams


class TagListService:
    def __init__(self, meta: MetaStore, upstreams: Upstreams, metrics: Metrics) -> None:
        self.meta = meta
        self.upstreams = upstreams
        self.metrics = metrics

    async def get(self, route: Route, params: Mapping[str, str]) -> tuple[bytes, str, str | None]:
        """The body, its source ("upstream", or "local" when the upstream failed) and the
        upstream's Link header for the next page."""
        client = self.upstreams.get(route.upstream)
        try:
            body, link = await client.tags_list(route.repo, params)
        except UpstreamNotFound:
            raise NameUnknown(route.repo) from None
        except UpstreamError as e:
            cached = self.meta.tag_list(route.upstream, route.repo)
            # Only the whole list is kept: a page of it cannot be answered from it.
            if params or cached is None or not is_unavailable(e):
                raise
            self.metrics.stale(route.upstream)
            return cached, "local", None
        if not params:
            self.meta.put_tag_list(route.upstream, route.repo, body)
        return body, "upstream", link
