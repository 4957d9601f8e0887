"""Scenario 1, boot storm: N nodes boot at once, each downloading one of M cold images (Zipf).

Every step uses fresh images (fresh random bytes) on the throttled upstream, so each
system starts cold. Reported per system x (N, M): total time, TTFB p50/p99, per-node
throughput, upstream bytes / unique image bytes, checksum failures, server peak RSS
and CPU seconds.
"""

from __future__ import annotations

import random
import time
from typing import Any

from ..clients import Fetch, run_downloads
from ..images import make_image, zipf_choices
from ..runner import RunContext, ScenarioResult, percentile, summarize
from ..systems.base import NotSupported, System

__all__ = ["run", "SYSTEMS", "storm_step"]

NAME = "boot_storm"
SYSTEMS = ("imgproxy-1w", "imgproxy-2w", "glance", "nginx-cache-lock", "nginx-slice-lock")


def storm_step(ctx: RunContext, system: System, nodes: int, images: int, tag: str, rng: random.Random) -> dict[str, Any]:
    """One cold boot storm against ``system``; raises NotSupported if it cannot serve cold images.

    Only the images some node picks are made and registered: an Image API system given a
    location with validation data starts its fill at once, so an unpicked image would
    charge the system upstream bytes no node asked for.
    """
    p = ctx.profile
    upstream = ctx.upstream
    picks = zipf_choices(nodes, images, rng)
    wanted = sorted(set(picks))
    files = {k: make_image(ctx.upstream_root, f"{tag}-{k}.img", p.storm_image_size) for k in wanted}
    try:
        t0 = time.perf_counter()
        urls = {k: system.cold_url(f, upstream.url_for(f, p.upstream_rate)) for k, f in files.items()}
        register_s = time.perf_counter() - t0
        fetches = [Fetch(urls[k], files[k].sha512, files[k].size) for k in picks]
        unique = sum(f.size for f in files.values())
        with ctx.metered(system) as usage:
            run = run_downloads(fetches, timeout=600)
        pulled, requests = upstream.usage_for(f.name for f in files.values())
    finally:
        for f in files.values():
            f.path.unlink(missing_ok=True)
    results = run.results
    ttfbs = [r["ttfb"] for r in results if r["ttfb"] is not None]
    rates = [r["bytes"] / r["total"] / 1e6 for r in results if r["ok"] and r["total"]]
    bad = [r for r in results if not r["ok"]]
    return {
        "total_s": round(max((r["total"] or 0) for r in results), 3),
        "ttfb_p50_s": round(percentile(ttfbs, 50) or -1, 3),
        "ttfb_p99_s": round(percentile(ttfbs, 99) or -1, 3),
        "node_MBps_p50": round(percentile(rates, 50) or 0, 1),
        "upstream_ratio": round(pulled / unique, 2) if unique else None,
        "upstream_MiB": round(pulled / (1 << 20), 1),
        "upstream_requests": requests,
        "register_s": round(register_s, 3),
        "failures": len(bad),
        "failure_detail": bad[0]["error"] if bad else "",
        "peak_rss_MiB": round(usage.peak_rss / (1 << 20), 1),
        "server_cpu_s": usage.cpu_s,
        "client_cpu_s": round(run.cpu_s, 2),
    }


def run(ctx: RunContext) -> ScenarioResult:
    p = ctx.profile
    result = ScenarioResult(
        NAME,
        f"Boot storm: N nodes, M cold images of {p.storm_image_size >> 20} MiB (Zipf), upstream {p.upstream_rate >> 20} MiB/s per connection",
        ["system", "N", "M", "total_s", "ttfb_p50_s", "ttfb_p99_s", "node_MBps_p50", "upstream_ratio",
         "upstream_requests", "register_s", "failures", "peak_rss_MiB", "server_cpu_s", "status"],
        plot={"x": "N", "y": "total_s", "series": "system", "split": "M", "ylabel": "total time (s)"},
    )
    rng = random.Random(4)
    for name in SYSTEMS:
        for m in p.storm_images:
            for n in p.storm_nodes:
                system = ctx.system_or_row(result, name, N=n, M=m)
                if system is None:
                    continue
                ctx.progress.step(f"{name} N={n} M={m}")
                samples = []
                try:
                    for rep in range(p.storm_repeats):
                        samples.append(storm_step(ctx, system, n, m, f"storm-{name}-{m}-{n}-{rep}", rng))
                except NotSupported as exc:
                    result.not_run(name, str(exc), N=n, M=m)
                    break
                except Exception as exc:  # a broken system must not end the whole run
                    result.not_run(name, f"error: {type(exc).__name__}: {str(exc)[:200]}", N=n, M=m)
                    continue
                row = {"system": name, "N": n, "M": m, **summarize(samples, ("total_s", "ttfb_p50_s"))}
                result.add_checked(row, samples, ctx.progress, label=f"{name} N={n} M={m}",
                                   status_prefix="{fails} nodes: ", what="nodes got wrong or missing bytes")
            else:
                continue
            break  # NotSupported: the other M values would say the same
    result.notes.append("upstream_ratio = bytes the upstream sent / bytes of the distinct images the nodes asked for (1.0 is ideal).")
    result.notes.append("register_s: creating the images and adding their locations (Image APIs only); the nodes start "
                        "after it. imgproxy reads nothing at registration: its verify pass rides along the first full read.")
    return result
