"""Issue 3's herd target: 16 clients at once on one cold image behind a ~100 MB/s upstream.

For each caching system the same workload runs twice on fresh (cold) content: one client
alone, then the herd. Reported: upstream bytes / image size for the herd (1.0 = every
byte read once), the herd's total time as a multiple of the lone client's time, and the
herd's TTFB p50/p99. The full profile uses a 1 GiB image at ``limit_rate 100m``; quick
uses a smaller image.

Two kinds of upstream. "per-conn": nginx's ``limit_rate``, per connection, so a system
that fetches with several ranged requests at once (imgproxy's read-ahead, nginx's
slices) gets a multiple of the rate, and its lone client is fast; the count of upstream
requests is shown next to the bytes. "shared": a relay in front of the same nginx
(:mod:`bench.servers.link`) whose connections share one rate, like a store behind a
~100 MB/s network link; there one client alone is bound by the link, as in the anchor.
"""

from __future__ import annotations

import os
from typing import Any

from ..clients import Fetch, run_downloads
from ..images import make_image
from ..runner import RunContext, ScenarioResult, percentile
from .cached_download import curl_many
from ..systems.base import ImageFile, NotSupported, System

__all__ = ["run"]

NAME = "herd"
SYSTEMS = ("imgproxy-1w", "imgproxy-2w", "glance", "nginx-cache-lock", "nginx-slice-lock")
# (node kind, upstream) runs. Node kinds: hashing Python nodes (every byte checked) and
# plain curls (the anchor's way). Upstreams: rate per connection, or one shared link.
RUNS = (("sha512", "per-conn"), ("curl", "per-conn"), ("curl", "shared"))


def _linked(image: ImageFile, name: str) -> ImageFile:
    """The same bytes under another name (a hard link): cold for a system that never read it.

    Each system has its own cache, so content can be shared across systems; within one
    system the lone and herd images differ in content (imgproxy dedups by content).
    """
    link = image.path.with_name(name)
    link.unlink(missing_ok=True)
    os.link(image.path, link)
    return ImageFile(link, image.size, image.sha512, image.md5)


def _clients(url: str, image: ImageFile, clients: int, kind: str) -> list[dict[str, Any]]:
    """``kind`` "sha512": Python nodes that hash what they get; "curl": curls to /dev/null
    (what the nginx anchor was measured with: on 2 cores, 16 hashing nodes limit the run)."""
    if kind != "curl":
        return run_downloads([Fetch(url, image.sha512, image.size) for _ in range(clients)], timeout=900).results
    results = curl_many(url, clients, timeout=900)
    for r in results:
        if r["ok"] and r["bytes"] != image.size:
            r.update(ok=False, error=f"{r['bytes']} bytes, expected {image.size}")
    return results


def _fetch_all(ctx: RunContext, system: System, image: ImageFile, clients: int, kind: str, link: str,
               *, again: bool = False) -> dict[str, Any]:
    """``clients`` at once on ``image``, cold. With ``again``, the same clients once more on the
    now-cached image (``cached_s``): what serving that many copies costs this machine at all."""
    p = ctx.profile
    cached_s = None
    try:
        source = (ctx.link_url_for(image, p.herd_rate) if link == "shared"
                  else ctx.upstream.url_for(image, p.herd_rate))
        url = system.cold_url(image, source)
        with ctx.metered(system) as usage:
            results = _clients(url, image, clients, kind)
        pulled, requests = ctx.upstream.usage_for([image.name])
        if again:
            repeat = _clients(url, image, clients, kind)
            results += [r for r in repeat if not r["ok"]]
            cached_s = max((r["total"] for r in repeat if r.get("total") is not None), default=None)
    finally:
        image.path.unlink(missing_ok=True)
    totals = [r["total"] for r in results if r.get("total") is not None]
    ttfbs = [r["ttfb"] for r in results if r.get("ttfb") is not None]
    bad = [r for r in results if not r["ok"]]
    return {
        "total_s": max(totals) if totals else None, "total_p50_s": percentile(totals, 50),
        "ttfb_p50_s": percentile(ttfbs, 50), "ttfb_p99_s": percentile(ttfbs, 99),
        "pulled": pulled, "requests": requests, "bad": bad,
        "cpu_s": usage.cpu_s, "rss": usage.peak_rss, "cached_s": cached_s,
    }


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def run(ctx: RunContext) -> ScenarioResult:
    p = ctx.profile
    n = p.herd_clients
    result = ScenarioResult(
        NAME,
        f"Herd: {n} clients at once on one cold {p.herd_image_size >> 20} MiB image, upstream "
        f"{p.herd_rate >> 20} MiB/s per connection or shared, vs one client alone",
        ["system", "client", "upstream", "clients", "alone_s", "total_s", "total_p50_s", "vs_alone", "cached_s", "vs_cached",
         "ttfb_p50_s", "ttfb_p99_s",
         "upstream_ratio", "upstream_requests", "failures", "peak_rss_MiB", "server_cpu_s", "status"],
        plot={"x": "run", "series": "system", "panels": [
            {"y": "total_s", "ylabel": f"total time, {n} clients (s)"},
            {"y": "ttfb_p99_s", "ylabel": "time to first byte p99 (s)"},
            {"y": "upstream_ratio", "ylabel": "upstream bytes / image size"},
        ]},
    )
    bases = {
        (kind, link, role): make_image(ctx.upstream_root, f"herd-{kind}-{link}-{role}-base.img", p.herd_image_size)
        for kind, link in RUNS for role in ("lone", "herd")
    }
    try:
        for name, kind, link in ((name, kind, link) for kind, link in RUNS for name in SYSTEMS):
            params = {"clients": n, "client": kind, "upstream": link, "run": f"{kind}, {link}"}
            system = ctx.system_or_row(result, name, **params)
            if system is None:
                continue
            try:
                tag = f"{name}-{kind}-{link}"
                ctx.progress.step(f"{name}: 1 {kind} client alone, {link} upstream")
                alone = _fetch_all(ctx, system, _linked(bases[kind, link, "lone"], f"herd-{tag}-lone.img"), 1, kind, link)
                ctx.progress.step(f"{name}: {n} {kind} clients, {link} upstream")
                many = _fetch_all(ctx, system, _linked(bases[kind, link, "herd"], f"herd-{tag}-herd.img"), n, kind, link,
                                  again=True)
            except NotSupported as exc:
                result.not_run(name, str(exc), **params)
                continue
            except Exception as exc:  # a broken system must not end the whole run
                result.not_run(name, f"error: {type(exc).__name__}: {str(exc)[:200]}", **params)
                continue
            bad = alone["bad"] + many["bad"]
            row = {
                "system": name, **params,
                "alone_s": _r(alone["total_s"]), "total_s": _r(many["total_s"]),
                "total_p50_s": _r(many["total_p50_s"]),
                "vs_alone": _r(many["total_s"] / alone["total_s"], 2) if many["total_s"] and alone["total_s"] else None,
                "cached_s": _r(many["cached_s"]),
                "vs_cached": _r(many["total_s"] / many["cached_s"], 2) if many["total_s"] and many["cached_s"] else None,
                "ttfb_p50_s": _r(many["ttfb_p50_s"]), "ttfb_p99_s": _r(many["ttfb_p99_s"]),
                "upstream_ratio": round(many["pulled"] / p.herd_image_size, 2),
                "upstream_ratio_alone": round(alone["pulled"] / p.herd_image_size, 2),
                "upstream_requests": many["requests"], "failures": len(bad),
                "peak_rss_MiB": round(many["rss"] / (1 << 20), 1), "server_cpu_s": many["cpu_s"],
                "status": "ok" if not bad else f"FAILED: {len(bad)} clients: {bad[0]['error'][:150]}",
            }
            if bad:
                result.failures.append(f"herd {name}: {len(bad)} clients got wrong or missing bytes ({bad[0]['error'][:150]})")
                ctx.progress.alarm(result.failures[-1])
            result.rows.append(row)
    finally:
        for base in bases.values():
            base.path.unlink(missing_ok=True)
    result.notes.append("Targets (issue 3): upstream_ratio 1.0 (each byte read once), vs_alone close to 1 "
                        "(anchor: nginx slice + lock ~1.2x), TTFB p99 small (no client waits for the whole fill).")
    result.notes.append("cached_s: the same clients again once the image is cached, so no upstream at all: "
                        "the floor this machine puts under any herd time (the clients share its cores). "
                        "vs_cached = total_s / cached_s: what the cold fill adds on top.")
    result.notes.append("upstream_requests counts the herd's requests to the upstream (HEADs included): "
                        "limit_rate is per connection, so parallel ranged fetches get a multiple of the rate.")
    return result
