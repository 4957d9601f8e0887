"""The HTML of ``GET /status``: one self-contained page, no script, no external asset.

It refreshes itself (``<meta http-equiv="refresh">``); the plots are inline SVG. Every figure
also sits in a ``data-value`` attribute under a stable ``id`` (``stat-hits``, ``fill-0`` ...),
so a tool can read the page as well as a person.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .history import Point

__all__ = ["StatusView", "render_status", "human_bytes"]

REFRESH_SECONDS = 5
PLOT_W, PLOT_H = 360, 64

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .2em} h2{font-size:1.05em;margin:1.2em 0 .4em}
.muted{color:#777} table{border-collapse:collapse} td,th{padding:2px 10px 2px 0;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{position:relative;width:360px;height:14px;background:#e4e4e4;border-radius:3px;overflow:hidden}
.bar>span{position:absolute;left:0;top:0;bottom:0;background:#3a7bd5}
.bar>i{position:absolute;top:0;bottom:0;width:2px;background:#c0392b}
.bar>i.low{background:#e67e22}
.grid{display:flex;flex-wrap:wrap;gap:2em} svg{background:#fff;border:1px solid #ddd}
code{font-size:.92em}
"""


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@dataclass
class StatusView:
    """Everything the page shows (see :func:`render_status`)."""

    figures: Mapping[str, Any]  # GET /v2/cache/stats's figures and LMDB's sizes
    points: Sequence[Point]  # the last hour, oldest first
    fills: Sequence[Mapping[str, Any]]  # image_id, chunk, filled, length, waiters, pid
    most_read: Sequence[Mapping[str, Any]]  # image_id, hits, last_accessed
    queued: Sequence[str]
    names: Mapping[str, str] = field(default_factory=dict)  # image id -> name, where known
    title: str = "imgproxy"
    now: float = field(default_factory=time.time)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _image(view: StatusView, image_id: str) -> str:
    name = view.names.get(image_id)
    label = f"{_e(name)} <code class=muted>{_e(image_id)}</code>" if name else f"<code>{_e(image_id)}</code>"
    return label


def _bar(fraction: float, marks: Sequence[tuple[float, str]] = ()) -> str:
    width = max(0.0, min(1.0, fraction)) * 100
    ticks = "".join(f'<i class="{cls}" style="left:{max(0.0, min(1.0, at)) * 100:.2f}%"></i>' for at, cls in marks)
    return f'<div class="bar"><span style="width:{width:.2f}%"></span>{ticks}</div>'


def _stat(key: str, label: str, value: int, shown: str | None = None) -> str:
    return (f'<tr><th>{_e(label)}</th><td class="n" id="stat-{_e(key)}" data-value="{value}">'
            f'{_e(shown if shown is not None else f"{value:,}")}</td></tr>')


def _polyline(values: Sequence[float | None], times: Sequence[float], top: float, now: float, color: str) -> str:
    pts = []
    for t, v in zip(times, values):
        if v is None:
            continue
        x = PLOT_W - (now - t) / 3600.0 * PLOT_W
        y = PLOT_H - 2 - (v / top if top > 0 else 0.0) * (PLOT_H - 4)
        pts.append(f"{max(0.0, x):.1f},{y:.1f}")
    if not pts:
        return ""
    return f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{" ".join(pts)}"/>'


def _plot(pid: str, title: str, series: Sequence[tuple[str, str, Sequence[float | None]]], times: Sequence[float],
          now: float, top: float, top_label: str) -> str:
    lines = "".join(_polyline(values, times, top, now, color) for _, color, values in series)
    legend = " ".join(f'<span style="color:{color}">&#9632; {_e(name)}</span>' for name, color, _ in series)
    empty = "" if lines else (f'<text x="{PLOT_W / 2}" y="{PLOT_H / 2}" text-anchor="middle" fill="#999" '
                              f'font-size="11">no samples yet (one every 10 s)</text>')
    return (f'<div><div>{_e(title)} <span class="muted">(last hour; top {_e(top_label)})</span></div>'
            f'<svg id="{pid}" width="{PLOT_W}" height="{PLOT_H}" viewBox="0 0 {PLOT_W} {PLOT_H}" '
            f'role="img" aria-label="{_e(title)}">{lines}{empty}</svg><div class="muted">{legend}'
            f'<span style="float:right">now</span></div></div>')


def _plots(view: StatusView) -> str:
    times = [p.t for p in view.points]
    served = [p.served_bps for p in view.points]
    upstream = [p.upstream_bps for p in view.points]
    top = max([*served, *upstream, 1.0])
    return "".join((
        _plot("plot-hit-ratio", "Chunk hit ratio", [("hits / reads", "#27ae60", [p.hit_ratio for p in view.points])],
              times, view.now, 1.0, "100%"),
        _plot("plot-bytes", "Bytes per second", [("served to clients", "#3a7bd5", served),
                                                ("read from upstream", "#c0392b", upstream)],
              times, view.now, top, human_bytes(top) + "/s"),
    ))


def _occupancy(f: Mapping[str, Any]) -> str:
    cached, limit = int(f.get("bytes_cached", 0)), int(f.get("max_size", 0))
    high, low = int(f.get("high_watermark_bytes", 0)), int(f.get("low_watermark_bytes", 0))
    frac = cached / limit if limit else 0.0
    marks = [(high / limit, "high"), (low / limit, "low")] if limit else []
    lmdb_used, lmdb_map = int(f.get("lmdb_used_bytes", 0)), int(f.get("lmdb_map_bytes", 0))
    return (
        f"<h2>Cache occupancy</h2>{_bar(frac, marks)}"
        f'<p><span id="occupancy" data-value="{cached}">{_e(human_bytes(cached))}</span> of '
        f'<span id="max-size" data-value="{limit}">{_e(human_bytes(limit))}</span> ({frac:.1%}); '
        f"pruning above {_e(human_bytes(high))} (red), down to {_e(human_bytes(low))} (orange). "
        f'LMDB: <span id="lmdb-used" data-value="{lmdb_used}">{_e(human_bytes(lmdb_used))}</span> used of a '
        f"{_e(human_bytes(lmdb_map))} map.</p>"
    )


def _counters(f: Mapping[str, Any]) -> str:
    hits, misses = int(f.get("hits", 0)), int(f.get("misses", 0))
    ratio = f"{hits / (hits + misses):.1%}" if hits + misses else "-"
    rows = [
        _stat("chunks", "chunks cached", int(f.get("chunks", 0))),
        _stat("hits", "chunk hits", hits),
        _stat("misses", "chunk misses (fills started)", misses),
        f'<tr><th>hit ratio</th><td class="n" id="hit-ratio">{ratio}</td></tr>',
        _stat("coalesced_waiters", "readers that joined a fill", int(f.get("coalesced_waiters", 0))),
        _stat("fills", "fills stored", int(f.get("fills", 0))),
        _stat("fill_failures", "fills failed", int(f.get("fill_failures", 0))),
        _stat("bytes_served", "bytes read through the cache", int(f.get("bytes_served", 0)),
              human_bytes(int(f.get("bytes_served", 0)))),
        _stat("bytes_upstream", "bytes read from stores", int(f.get("bytes_upstream", 0)),
              human_bytes(int(f.get("bytes_upstream", 0)))),
        _stat("evicted_chunks", "chunks evicted", int(f.get("evicted_chunks", 0))),
        _stat("corrupt_chunks", "verification failures", int(f.get("corrupt_chunks", 0))),
    ]
    return f'<div><h2>Counters <span class="muted">(all workers)</span></h2><table>{"".join(rows)}</table></div>'


def _fills(view: StatusView) -> str:
    if not view.fills:
        return '<h2>Fills in flight: <span id="fills-count" data-value="0">0</span></h2><p class="muted">none</p>'
    rows = []
    for i, fill in enumerate(sorted(view.fills, key=lambda f: (f["image_id"], f["chunk"]))):
        filled, length = int(fill["filled"]), max(1, int(fill["length"]))
        rows.append(
            f'<tr id="fill-{i}" data-image="{_e(fill["image_id"])}" data-filled="{filled}" data-length="{length}" '
            f'data-waiters="{int(fill["waiters"])}"><td>{_image(view, fill["image_id"])}</td>'
            f'<td class="n">{int(fill["chunk"])}</td><td>{_bar(filled / length)}</td>'
            f'<td class="n">{_e(human_bytes(filled))} / {_e(human_bytes(length))}</td>'
            f'<td class="n">{int(fill["waiters"])}</td><td class="n muted">{int(fill.get("pid", 0))}</td></tr>')
    return (f'<h2>Fills in flight: <span id="fills-count" data-value="{len(view.fills)}">{len(view.fills)}</span></h2>'
            '<table><tr><th>image</th><th class="n">chunk</th><th>progress</th><th class="n">bytes</th>'
            f'<th class="n">waiters</th><th class="n">pid</th></tr>{"".join(rows)}</table>')


def _most_read(view: StatusView) -> str:
    if not view.most_read:
        return '<div><h2>Most read images</h2><p class="muted">none yet</p></div>'
    rows = "".join(
        f'<tr class="top-image" data-image="{_e(row["image_id"])}" data-hits="{int(row["hits"])}">'
        f'<td>{_image(view, row["image_id"])}</td><td class="n">{int(row["hits"]):,}</td>'
        f'<td class="muted">{_e(_ago(view.now, float(row["last_accessed"])))}</td></tr>'
        for row in view.most_read)
    return (f'<div><h2>Most read images</h2><table><tr><th>image</th><th class="n">reads</th><th>last read</th></tr>'
            f"{rows}</table></div>")


def _queue(view: StatusView) -> str:
    items = "".join(f'<li class="queued" data-image="{_e(i)}">{_image(view, i)}</li>' for i in view.queued)
    body = f"<ol>{items}</ol>" if items else '<p class="muted">empty</p>'
    return (f'<div><h2>Prefetch queue: <span id="queued" data-value="{len(view.queued)}">{len(view.queued)}</span>'
            f"</h2>{body}</div>")


def _ago(now: float, then: float) -> str:
    if then <= 0:
        return "-"
    seconds = max(0, int(now - then))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def render_status(view: StatusView) -> str:
    """The whole page."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(view.now))
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        f"<title>{_e(view.title)} status</title><style>{_CSS}</style></head><body>"
        f'<h1>{_e(view.title)} status</h1><div class="muted">{_e(stamp)}; refreshes every {REFRESH_SECONDS} s</div>'
        f"{_occupancy(view.figures)}"
        f'<div class="grid">{_counters(view.figures)}<div><h2>Last hour</h2>{_plots(view)}</div></div>'
        f"{_fills(view)}"
        f'<div class="grid">{_most_read(view)}{_queue(view)}</div>'
        "</body></html>\n"
    )
