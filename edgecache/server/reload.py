"""SIGHUP (systemd's ExecReload): apply what can change without dropping a
connection, and say what needs a restart."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from edgecache.config import Config, ConfigError, load
from edgecache.server.registry_api import Services

log = logging.getLogger("edgecache.reload")

# Changes applied in place; anything else is logged as needing a restart.
LIVE = {"tag_ttl", "cache", "pinned", "prefetch", "sync", "access"}


async def reload(svc: Services) -> list[str]:
    """Read the config file again and apply it; returns the keys that need a restart."""
    old = svc.config
    if old.source.startswith("<"):
        new = old                          # the embedded default does not change
    else:
        try:
            new = load(Path(old.source))
        except ConfigError as e:
            log.error("reload: %s; keeping the running configuration", e)
            return []
    changed = [f.name for f in dataclasses.fields(Config)
               if f.name != "source" and getattr(old, f.name) != getattr(new, f.name)]
    # Access at once (a revoked user or token is refused from now on). An upstream
    # made private takes effect too; one made public stays private until a restart.
    upstreams = {name: dataclasses.replace(u, public=u.public and old.upstreams.get(name, u).public)
                 for name, u in new.upstreams.items()}
    upstreams.update({name: dataclasses.replace(u, public=False)
                      for name, u in old.upstreams.items() if name not in new.upstreams})
    try:
        await svc.access.reload(new.access, upstreams)
    except OSError as e:
        log.error("reload: access files unreadable (%s); keeping the running configuration", e)
        return []
    svc.manifests.tag_ttl = new.tag_ttl
    svc.referrers.tag_ttl = new.tag_ttl
    svc.store.set_budget(new.cache.max_size, new.cache.high_watermark, new.cache.low_watermark)
    svc.store.evict_interval = new.cache.evict_interval
    svc.blobs.fills.abandon_after = new.cache.abandon_after
    svc.blobs.fills.finish_fraction = new.cache.finish_fraction
    svc.syncer.cfg = new
    svc.syncer.paths = {"pinned": new.pinned, "prefetch": new.prefetch}
    svc.config = new
    svc.syncer.request_reload()
    restart = [k for k in changed if k not in LIVE]
    # The scrub runs on the settings it started with.
    restart += [f"cache.{k}" for k in ("scrub_interval", "scrub_rate")
                if getattr(old.cache, k) != getattr(new.cache, k)]
    if (old.sync.schedule, old.sync.interval) != (new.sync.schedule, new.sync.interval):
        restart.append("sync.schedule/interval")
    restart += [f"upstreams.{name}.public" for name, u in new.upstreams.items()
                if u.public and name in old.upstreams and not old.upstreams[name].public]
    a = svc.access
    # The files behind access (htpasswd, tokens) are re-read whatever the config says.
    log.info("reloaded %s: changed %s; access re-read (%d users, %d tokens, %d networks)%s",
             old.source, ", ".join(changed) or "no key", len(a.users), len(a.tokens),
             len(a.networks), f"; needs a restart: {', '.join(restart)}" if restart else "")
    return restart
