"""Scenario 6, growth: a cache of many images under a size bound.

imgproxy runs with a small ``cache_max_size`` and its pruner loop off; the harness
uploads more images than fit, then asks for a prune (``POST /v2/cache/prune``) while a
node reads a warm image, and reports the pruning time and the reader's throughput
against its throughput with no pruning. Glance is not run: it never prunes on its own
(its pruner is a separate command).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from ..clients import Fetch, run_downloads
from ..images import make_image
from ..runner import RunContext, ScenarioResult
from ..systems.base import NotSupported
from ..systems.imgproxy import ImgproxySystem

__all__ = ["run"]

NAME = "growth"


def _measure(ctx: RunContext, system: ImgproxySystem) -> dict[str, Any]:
    p = ctx.profile
    files = ctx.work / "growth-files"
    reader = make_image(files, "growth-reader.img", max(p.growth_image_size, 32 << 20))
    reader_url = system.warm_url(reader)
    reader.path.unlink()  # the digests stay in ``reader``; the file is not needed
    t0 = time.perf_counter()
    for i in range(p.growth_images):
        image = make_image(files, f"growth-{i}.img", p.growth_image_size)
        system.warm_url(image)
        image.path.unlink()
    fill_s = time.perf_counter() - t0
    alone = run_downloads([Fetch(reader_url, reader.sha512, reader.size)])
    answer: dict[str, Any] = {}

    def prune() -> None:
        t = time.perf_counter()
        r = httpx.post(system.url + "/v2/cache/prune", headers=system.headers, timeout=600)
        answer.update(status=r.status_code, seconds=time.perf_counter() - t, body=r.text[:300])

    with ctx.metered(system) as usage:
        thread = threading.Thread(target=prune)
        thread.start()
        during = run_downloads([Fetch(reader_url, reader.sha512, reader.size)])
        thread.join()
    if answer.get("status") in (404, 405, 501):
        raise NotSupported(f"POST /v2/cache/prune answered {answer['status']}")
    try:
        pruned = httpx.Response(200, text=answer.get("body", "{}")).json()
    except ValueError:
        pruned = {}
    ok = alone.results[0]["ok"] and during.results[0]["ok"]
    return {
        "system": system.name, "images": p.growth_images, "image_MiB": p.growth_image_size >> 20,
        "cache_max_MiB": p.growth_cache_max >> 20, "fill_s": round(fill_s, 2),
        "prune_http": answer.get("status"), "prune_s": round(answer.get("seconds", 0), 3),
        "pruned_MiB": round(pruned.get("total_bytes_pruned", 0) / (1 << 20), 1),
        "read_MBps_alone": round(reader.size / alone.results[0]["total"] / 1e6, 1) if alone.results[0]["total"] else None,
        "read_MBps_pruning": round(reader.size / during.results[0]["total"] / 1e6, 1) if during.results[0]["total"] else None,
        "server_cpu_s": usage.cpu_s, "peak_rss_MiB": round(usage.peak_rss / (1 << 20), 1),
        "status": "ok" if ok and answer.get("status", 500) < 300 else
        f"FAILED: reader ok={ok}, prune HTTP {answer.get('status')}: {answer.get('body', '')[:100]}",
        "wrong_bytes": not ok,
    }


def run(ctx: RunContext) -> ScenarioResult:
    p = ctx.profile
    result = ScenarioResult(
        NAME, f"Growth: {p.growth_images} images of {p.growth_image_size >> 20} MiB into a {p.growth_cache_max >> 20} MiB cache, then prune",
        ["system", "images", "cache_max_MiB", "fill_s", "prune_http", "prune_s", "pruned_MiB", "read_MBps_alone",
         "read_MBps_pruning", "server_cpu_s", "peak_rss_MiB", "status"],
        plot={"x": "", "y": "prune_s", "series": "system", "ylabel": "prune time (s)"},
    )
    ctx.progress.step("imgproxy-1w with a small cache")
    system = ImgproxySystem(ctx.work / "systems" / "imgproxy-growth", workers=1,
                            config={"cache_max_size": p.growth_cache_max, "prune_interval": 0})
    try:
        ctx.add_system("imgproxy-growth", system)
        row = _measure(ctx, system)
        if row["wrong_bytes"]:
            result.failures.append(f"growth: the reader got wrong bytes or none ({row['status']})")
        result.rows.append(row)
    except NotSupported as exc:
        result.not_run(system.name, str(exc))
    except Exception as exc:
        result.not_run(system.name, f"error: {type(exc).__name__}: {str(exc)[:200]}")
    result.not_run("glance", "Glance never prunes on its own; its pruner is a separate command (glance-cache-pruner)")
    return result
