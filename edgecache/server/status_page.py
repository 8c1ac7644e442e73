"""GET /_edgecache/: the status page a person looks at. Server-rendered from the
same document as /_edgecache/status (no build step, no external assets, charts as
inline SVG), refreshing itself. Figures that /metrics also has carry the metric's
name and exact value (data-metric, data-value), so what the page says can be
checked against what Prometheus scrapes."""
from __future__ import annotations

import datetime
import html
from typing import Any, Iterable

from edgecache.recent import SOURCES, Minute, RecentError
from edgecache.units import human_size as size

REFRESH_S = 10
COLORS = {"local": "#2b8a3e", "sibling": "#1971c2", "upstream": "#e8590c", "hit": "#2b8a3e"}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(ts: float | None) -> str:
    if not ts:
        return "never"
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _figure(label: str, shown: str, metric: str | None = None, value: float | None = None) -> str:
    data = f' data-metric="{_e(metric)}" data-value="{value!r}"' if metric is not None else ""
    return (f'<div class="fig"><div class="v"{data}>{_e(shown)}</div>'
            f'<div class="l">{_e(label)}</div></div>')


def _bars(values: list[float], color: str, title: str, height: int = 40, fmt=str) -> str:
    """A small bar chart of per-minute values (oldest left), scaled to its maximum."""
    top = max(values) if values and max(values) > 0 else 1
    w = 4
    bars = "".join(
        f'<rect x="{i * w}" y="{height - v / top * height:.1f}" width="{w - 1}" '
        f'height="{v / top * height:.1f}" fill="{color}"><title>{_e(fmt(v))}</title></rect>'
        for i, v in enumerate(values) if v > 0)
    return (f'<svg class="chart" role="img" aria-label="{_e(title)}" width="{len(values) * w}" '
            f'height="{height}" viewBox="0 0 {len(values) * w} {height}">'
            f'<rect width="100%" height="100%" fill="#f1f3f5"/>{bars}</svg>')


def _table(headers: list[str], rows: Iterable[list[str]], cls: str = "") -> str:
    rows = list(rows)
    if not rows:
        return '<p class="none">none</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _state(text: str) -> str:
    good = text in ("up", "complete", "closed")
    bad = text in ("down", "failed", "open", "bad", "failing")
    return f'<span class="st {"good" if good else "bad" if bad else "mid"}">{_e(text)}</span>'


def render(doc: dict[str, Any], totals: dict[str, float], minutes: list[Minute],
           errors: list[RecentError], denials: list[tuple]) -> str:
    """The page. `doc` is the status document, `totals` counter values as /metrics
    has them (by sample name), `minutes` the last hour, `errors` and `denials` the
    latest of each."""
    hits = totals.get("hits", 0.0)
    misses = totals.get("misses", 0.0)
    ratio = hits / (hits + misses) if hits + misses else None
    hour_hits = sum(m.hits for m in minutes)
    hour_misses = sum(m.misses for m in minutes)
    hour_ratio = [m.hits / (m.hits + m.misses) if m.hits + m.misses else 0.0 for m in minutes]
    used, budget = doc["bytes_used"], doc["budget_bytes"]
    fill = min(1.0, used / budget) if budget else 0.0

    figures = "".join([
        _figure("hit ratio since start", f"{ratio:.1%}" if ratio is not None else "-"),
        _figure("hits", f"{hits:,.0f}", "edgecache_cache_hits_total", hits),
        _figure("misses", f"{misses:,.0f}", "edgecache_cache_misses_total", misses),
        *(_figure(f"served from {s}", size(totals.get(f"served:{s}", 0.0)),
                  f'edgecache_served_bytes_total{{source="{s}"}}', totals.get(f"served:{s}", 0.0))
          for s in SOURCES),
        _figure("blobs", f"{doc['blob_count']:,}", "edgecache_store_blobs",
                float(doc["blob_count"])),
    ])
    hour = (
        f'<div class="charts"><div><h3>Hit ratio, last hour '
        f'({(hour_hits / (hour_hits + hour_misses)) if hour_hits + hour_misses else 0:.0%} of '
        f'{hour_hits + hour_misses:,} requests)</h3>'
        + _bars(hour_ratio, COLORS["hit"], "hit ratio per minute", fmt=lambda v: f"{v:.0%}")
        + "</div>"
        + "".join(f'<div><h3>Bytes from {s}, last hour ({size(sum(m.served.get(s, 0) for m in minutes))})'
                  f'</h3>' + _bars([float(m.served.get(s, 0)) for m in minutes], COLORS[s],
                                   f"bytes from {s} per minute", fmt=size) + "</div>"
                  for s in SOURCES)
        + "</div>")
    disk = (f'<div class="disk"><div class="bar"><div style="width:{fill * 100:.1f}%"></div></div>'
            f'<p><span data-metric="edgecache_store_bytes{{kind=&quot;used&quot;}}" '
            f'data-value="{float(used)!r}">{_e(size(used))}</span> used of '
            f'<span data-metric="edgecache_store_bytes{{kind=&quot;budget&quot;}}" '
            f'data-value="{float(budget)!r}">{_e(size(budget))}</span> '
            f'({fill:.0%}); pinned {_e(size(doc["pinned_bytes"]))}; evictions '
            f'{doc["store"]["evictions"]:,}; quarantined {doc["store"]["quarantined"]:,}'
            f'{"; <b>disk full</b>" if doc["store"]["disk_full"] else ""}</p></div>')
    upstreams = _table(["upstream", "state", "answering", "failures in a row", "last error", "last ok"], (
        [_e(name), _state("failing" if u["state"] == "up" and not u.get("answering", True)
                          else u["state"]),
         "yes" if u.get("answering", True) else "<b>no</b>",
         _e(u["consecutive_failures"]), _e(u["last_error"] or "-"), _e(_when(u["last_ok_at"]))]
        for name, u in sorted(doc["upstreams"].items())))
    sync = doc["sync"]
    entries = _table(["list", "image", "state", "progress", "referrers", "digest", "reason"], (
        [_e(e["kind"]), _e(e["ref"]) + f' <small>[{_e(",".join(e["platforms"]))}]</small>',
         _state(e["state"]),
         _e(f'{size(e["bytes_done"])} / {size(e["bytes_total"])}') if e["bytes_total"] else "-",
         _e(e.get("referrers", 0)), f'<code>{_e((e["digest"] or "-")[:19])}</code>',
         _e(e["reason"] or "")]
        for e in sync["entries"]))
    sib = doc.get("siblings")
    siblings = '<p class="none">siblings are not enabled</p>' if sib is None else _table(
        ["sibling", "node", "state", "fetched from it", "served to it", "last error"], (
            [_e(p["url"]), _e(p["node_id"] or "-"), _state(p["state"]), _e(size(p["bytes_fetched"])),
             _e(size(p["bytes_served"])), _e(p["last_error"] or "-")] for p in sib["peers"]))
    latest = sorted([(e.at, e.kind, e.detail) for e in errors]
                    + [(t, f"denied {status}", f"{method} {path} from {who}: {why}")
                       for t, status, method, path, who, why in denials], reverse=True)[:20]
    problems = "".join(f"<li>{_e(p)}</li>" for p in sync["problems"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_S}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edgecache {_e(doc["version"])}</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#212529;max-width:1200px}}
h1{{font-size:1.4em;margin:0}} h2{{font-size:1.1em;margin:1.4em 0 .4em}} h3{{font-size:.9em;margin:.2em 0;font-weight:600}}
.sub{{color:#868e96}} .figs{{display:flex;flex-wrap:wrap;gap:.6em}}
.fig{{border:1px solid #dee2e6;border-radius:6px;padding:.5em .8em;min-width:8em}}
.fig .v{{font-size:1.3em;font-weight:600}} .fig .l{{color:#868e96;font-size:.85em}}
.charts{{display:flex;flex-wrap:wrap;gap:1.2em}} .chart{{display:block}}
.bar{{background:#f1f3f5;height:12px;border-radius:6px;overflow:hidden;max-width:480px}}
.bar div{{background:#1971c2;height:100%}}
table{{border-collapse:collapse;width:100%}} th,td{{text-align:left;padding:.25em .6em;border-bottom:1px solid #e9ecef;vertical-align:top}}
th{{font-weight:600;color:#495057}} .none{{color:#868e96}}
.st{{padding:0 .4em;border-radius:4px}} .good{{background:#d3f9d8}} .bad{{background:#ffe3e3}} .mid{{background:#fff3bf}}
code{{font-size:.9em}}
</style></head>
<body>
<h1>edgecache <span class="sub">{_e(doc["version"])}</span></h1>
<p class="sub">up {_e(round(doc["uptime_s"]))} s · data in {_e(doc["data_dir"])} ·
 updated {_e(_when(doc["now"]))}, every {REFRESH_S} s</p>
<h2>Traffic</h2><div class="figs">{figures}</div>
{hour}
<h2>Disk</h2>{disk}
<h2>Upstreams</h2>{upstreams}
<h2>Pinned and prefetch</h2>
<p>{sync["totals"]["pinned"]["complete"]}/{sync["totals"]["pinned"]["desired"]} pinned complete,
 {sync["totals"]["prefetch"]["complete"]}/{sync["totals"]["prefetch"]["desired"]} prefetch;
 {"a sync is running" if sync["running"] else "idle"}; last success
 {_e(_when(doc.get("sync_last_success", {}).get("pinned")))}</p>
{entries}{f"<ul>{problems}</ul>" if problems else ""}
<h2>Siblings</h2>{siblings}
<h2>Last errors</h2>
{_table(["when", "what", "detail"], ([_e(_when(t)), _e(k), _e(d)] for t, k, d in latest), "errors")}
</body></html>
"""
