"""Scenario 6, growth: a cache of many images under a size bound, then a prune of a shrunk bound.

imgproxy runs with a small ``cache_max_size``, its file store cached as a remote store would
be (``[file] in_place = false``), and its periodic pruner off (it still prunes
on its own when a write crosses the high watermark). The harness uploads more images than
fit, timing the first and the last quarter of the uploads (cost as the cache fills and
evicts). Then the operator halves the bound and restarts; ``POST /v2/cache/prune`` runs
while a node reads a warm image, and the report shows the pruning time, what it evicted
(from ``GET /v2/cache/stats``) and the reader's throughput against its throughput alone.
Glance is not run: it never prunes on its own (its pruner is a separate command).
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
SYSTEMS: tuple[str, ...] = ()  # it starts its own, specially configured imgproxy systems
WORKERS = (1, 2)


def _stats(system: ImgproxySystem) -> dict[str, Any]:
    r = httpx.get(system.url + "/v2/cache/stats", headers=system.headers, timeout=60)
    if r.status_code in (404, 405, 501):
        raise NotSupported(f"GET /v2/cache/stats answered {r.status_code}")
    r.raise_for_status()
    return dict(r.json())


def _mbps(size: int, seconds: float | None) -> float | None:
    return round(size / seconds / 1e6, 1) if seconds else None


def _measure(ctx: RunContext, system: ImgproxySystem) -> dict[str, Any]:
    p = ctx.profile
    files = ctx.work / "growth-files"
    took = []
    t0 = time.perf_counter()
    for i in range(p.growth_images):
        image = make_image(files, f"growth-{i}.img", p.growth_image_size)
        t = time.perf_counter()
        system.upload(system.create_image(image.name), image.path)
        took.append(time.perf_counter() - t)
        image.path.unlink()
    fill_s = time.perf_counter() - t0
    quarter = max(1, len(took) // 4)
    grown = _stats(system)
    # The reader goes in last, so it is the most recently used image when the bound shrinks.
    reader = make_image(files, "growth-reader.img", max(4 << 20, p.growth_cache_max // 4))
    reader_url = system.warm_url(reader)
    reader.path.unlink()  # the digests stay in ``reader``; the file is not needed
    alone = run_downloads([Fetch(reader_url, reader.sha512, reader.size)])
    system.restart(cache_max_size=p.growth_cache_max // 2)
    before = _stats(system)
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
    after = _stats(system)
    ok = alone.results[0]["ok"] and during.results[0]["ok"]
    mib = 1 << 20
    return {
        "system": system.name, "images": p.growth_images, "image_MiB": round(p.growth_image_size / mib, 2),
        "cache_max_MiB": round(p.growth_cache_max / mib, 2), "fill_s": round(fill_s, 2),
        "upload_MBps_first": _mbps(p.growth_image_size * quarter, sum(took[:quarter])),
        "upload_MBps_last": _mbps(p.growth_image_size * quarter, sum(took[-quarter:])),
        "evicted_growing_MiB": round(grown.get("evicted_bytes", 0) / mib, 1),
        "cached_MiB": round(before.get("bytes_cached", 0) / mib, 1),
        "shrunk_max_MiB": round(p.growth_cache_max // 2 / mib, 2),
        "prune_http": answer.get("status"), "prune_s": round(answer.get("seconds", 0), 3),
        # The stats' evicted counter may lag in another worker; the drop in cached bytes does not.
        "pruned_MiB": round(max(after.get("evicted_bytes", 0) - before.get("evicted_bytes", 0),
                                before.get("bytes_cached", 0) - after.get("bytes_cached", 0)) / mib, 1),
        "cached_after_MiB": round(after.get("bytes_cached", 0) / mib, 1),
        "read_MBps_alone": _mbps(reader.size, alone.results[0]["total"]),
        "read_MBps_pruning": _mbps(reader.size, during.results[0]["total"]),
        "server_cpu_s": usage.cpu_s, "peak_rss_MiB": round(usage.peak_rss / mib, 1),
        "status": "ok" if ok and answer.get("status", 500) < 300 else
        f"FAILED: reader ok={ok}, prune HTTP {answer.get('status')}: {answer.get('body', '')[:100]}",
        "wrong_bytes": not ok,
    }


def run(ctx: RunContext) -> ScenarioResult:
    p = ctx.profile
    result = ScenarioResult(
        NAME, f"Growth: {p.growth_images} images of {p.growth_image_size >> 20} MiB into a {p.growth_cache_max >> 20} MiB "
              f"cache; then the bound is halved and a prune runs while a node reads",
        ["system", "images", "cache_max_MiB", "fill_s", "upload_MBps_first", "upload_MBps_last", "evicted_growing_MiB",
         "cached_MiB", "shrunk_max_MiB", "prune_http", "prune_s", "pruned_MiB", "cached_after_MiB", "read_MBps_alone",
         "read_MBps_pruning", "server_cpu_s", "peak_rss_MiB", "status"],
        plot={"x": "", "y": "prune_s", "series": "system", "ylabel": "prune time (s)"},
    )
    for workers in WORKERS:
        name = f"imgproxy-{workers}w"
        if ctx.only_systems and name not in ctx.only_systems:
            continue
        ctx.progress.step(f"{name} with a {p.growth_cache_max >> 20} MiB cache")
        # The file store cached like a remote store's (a local one is read in place, uncached).
        system = ImgproxySystem(ctx.work / "systems" / f"{name}-growth", workers=workers,
                                config={"cache_max_size": p.growth_cache_max, "prune_interval": 0,
                                        "file": {"in_place": False}})
        try:
            ctx.add_system(f"{name}-growth", system)
            row = _measure(ctx, system)
            if row["wrong_bytes"]:
                result.failures.append(f"growth {name}: the reader got wrong bytes or none ({row['status']})")
            result.rows.append(row)
        except NotSupported as exc:
            result.not_run(name, str(exc))
        except Exception as exc:
            result.not_run(name, f"error: {type(exc).__name__}: {str(exc)[:200]}")
        finally:
            ctx.stop_system(f"{name}-growth", remove=True)  # free its CPU and its GiBs for the next one
    result.not_run("glance", "Glance never prunes on its own; its pruner is a separate command (glance-cache-pruner)")
    return result
