"""Scenario 3, ranged reads: K nodes at once each read a random 4 MiB range of a cold image.

Served = ranges answered 206 with exactly the right bytes. The upstream ratio shows how
much of the image each system pulled to answer them (a whole-image fill reads far more
than the ranges asked for).
"""

from __future__ import annotations

import random
from typing import Any

from ..clients import Fetch, run_downloads
from ..images import make_image, range_digest
from ..runner import RunContext, ScenarioResult, percentile
from ..systems.base import NotSupported

__all__ = ["run"]

NAME = "ranged"
SYSTEMS = ("imgproxy-1w", "imgproxy-2w", "glance", "nginx-cache-lock", "nginx-slice-lock")
RANGE = 4 << 20


def _step(ctx: RunContext, name: str, rng: random.Random) -> dict[str, Any]:
    p = ctx.profile
    system = ctx.system(name)
    image = make_image(ctx.upstream_root, f"ranged-{name}.img", p.range_image_size)
    try:
        url = system.cold_url(image, ctx.upstream.url_for(image, p.upstream_rate))
        fetches = []
        for _ in range(p.range_count):
            first = rng.randrange(0, image.size - RANGE)
            fetches.append(Fetch(url, range_digest(image, first, first + RANGE - 1), image.size, (first, first + RANGE - 1)))
        with ctx.metered(system) as usage:
            run = run_downloads(fetches, timeout=600)
        pulled, _ = ctx.upstream.usage_for([image.name])
    finally:
        image.path.unlink(missing_ok=True)
    served = [r for r in run.results if r["ok"]]
    ttfbs = [r["ttfb"] for r in run.results if r["ttfb"] is not None]
    bad = [r for r in run.results if not r["ok"]]
    return {
        "system": name, "ranges": len(fetches), "served": len(served),
        "upstream_MiB": round(pulled / (1 << 20), 1),
        "upstream_per_requested": round(pulled / (RANGE * len(fetches)), 2),
        "total_s": round(run.wall, 3), "ttfb_p50_s": round(percentile(ttfbs, 50) or -1, 3),
        "server_cpu_s": usage.cpu_s, "peak_rss_MiB": round(usage.peak_rss / (1 << 20), 1),
        "status": "ok" if not bad else f"{len(bad)} not served: {bad[0]['error'][:150]}",
        "wrong_bytes": sum(1 for r in bad if "sha512" in r["error"]),
    }


def run(ctx: RunContext) -> ScenarioResult:
    p = ctx.profile
    result = ScenarioResult(
        NAME, f"Ranged reads: {p.range_count} random 4 MiB ranges at once over a cold {p.range_image_size >> 20} MiB image",
        ["system", "ranges", "served", "upstream_MiB", "upstream_per_requested", "total_s", "ttfb_p50_s", "server_cpu_s", "status"],
        plot={"x": "", "y": "upstream_per_requested", "series": "system", "ylabel": "upstream bytes / requested bytes"},
    )
    rng = random.Random(3)
    for name in SYSTEMS:
        if ctx.system_or_row(result, name) is None:
            continue
        ctx.progress.step(name)
        try:
            row = _step(ctx, name, rng)
        except NotSupported as exc:
            result.not_run(name, str(exc))
            continue
        except Exception as exc:
            result.not_run(name, f"error: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        if row["wrong_bytes"]:
            result.failures.append(f"ranged {name}: {row['wrong_bytes']} ranges had wrong bytes")
            ctx.progress.alarm(result.failures[-1])
        result.rows.append(row)
    result.notes.append("Each 4 MiB range at a random offset overlaps two 4 MiB chunks (imgproxy) or slices (nginx "
                        "slice), which sets the floor of upstream_per_requested near 2; imgproxy's verify pass of an "
                        "image added with validation data waits for a full read, so ranges alone never pull the image.")
    return result
