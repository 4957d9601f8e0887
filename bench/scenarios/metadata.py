"""Scenario 5, metadata: create many images, then show and list-100 (with and without filters).

Glance creates only ``meta_creates_glance`` images (it manages ~15/s). Each call type is
measured at concurrency 1 and 16: requests/s, p50 and p99 latency.
"""

from __future__ import annotations

import json
import random
from typing import Any

from ..clients import run_requests
from ..runner import RunContext, ScenarioResult, percentile
from ..systems.imageapi import ImageApiSystem

__all__ = ["run"]

NAME = "metadata"
SYSTEMS = ("imgproxy-1w", "imgproxy-2w", "glance")
FILTER = "/v2/images?limit=100&disk_format=raw&container_format=bare&status=queued&sort_key=name&sort_dir=asc"


def _row(name: str, op: str, conc: int, run: Any, count: int) -> dict[str, Any]:
    lat = [r["latency"] for r in run.results if "latency" in r]
    return {
        "system": name, "op": op, "images": count, "concurrency": conc,
        "req_per_s": round(len(lat) / run.wall, 1) if run.wall else None,
        "p50_ms": round((percentile(lat, 50) or 0) * 1000, 1),
        "p99_ms": round((percentile(lat, 99) or 0) * 1000, 1),
        "errors": len(run.errors),
        "status": "ok" if not run.errors else f"errors: {run.errors[0][:120]}",
    }


def _measure(ctx: RunContext, result: ScenarioResult, name: str, system: ImageApiSystem) -> None:
    p = ctx.profile
    count = p.meta_creates_glance if name == "glance" else p.meta_creates
    ctx.progress.step(f"{name}: create {count}")
    body = [("POST", "/v2/images", {"name": f"meta-{name}-{i:06d}", "disk_format": "raw", "container_format": "bare",
                                    "tags": [f"t{i % 10}"]}) for i in range(count)]
    with ctx.metered(system) as usage:
        created = run_requests(system.url, body, concurrency=16, headers=system.headers, timeout=60, keep_bodies=True)
    row = _row(name, "create", 16, created, count)
    row["peak_rss_MiB"], row["server_cpu_s"] = round(usage.peak_rss / (1 << 20), 1), usage.cpu_s
    result.rows.append(row)
    ids = [json.loads(r["body"])["id"] for r in created.results if "body" in r]
    if not ids:
        return
    rng = random.Random(5)
    # Glance lists 100 images at ~12/s: fewer list calls keep a quick run short.
    n_list = max(10, p.meta_requests // 4) if name == "glance" else p.meta_requests
    ops = {
        "show": [("GET", f"/v2/images/{rng.choice(ids)}") for _ in range(p.meta_requests)],
        "list-100": [("GET", "/v2/images?limit=100")] * n_list,
        "list-100-filtered": [("GET", FILTER)] * n_list,
    }
    for op, reqs in ops.items():
        for conc in (1, 16):
            ctx.progress.step(f"{name}: {op} c={conc}")
            with ctx.metered(system) as usage:
                run = run_requests(system.url, reqs, concurrency=conc, headers=system.headers, timeout=60,
                                   max_seconds=p.meta_step_seconds)
            row = _row(name, op, conc, run, count)
            row["requests"] = sum(1 for r in run.results if "latency" in r)
            row["peak_rss_MiB"], row["server_cpu_s"] = round(usage.peak_rss / (1 << 20), 1), usage.cpu_s
            result.rows.append(row)


def run(ctx: RunContext) -> ScenarioResult:
    p = ctx.profile
    result = ScenarioResult(
        NAME, "Metadata: create N images, then show / list-100 at concurrency 1 and 16",
        ["system", "op", "images", "concurrency", "requests", "req_per_s", "p50_ms", "p99_ms", "errors", "peak_rss_MiB", "status"],
        plot={"x": "op", "y": "req_per_s", "series": "system", "split": "concurrency", "ylabel": "requests/s"},
    )
    for name in SYSTEMS:
        system = ctx.system_or_row(result, name)
        if system is None:
            continue
        assert isinstance(system, ImageApiSystem)
        try:
            _measure(ctx, result, name, system)
        except Exception as exc:
            result.not_run(name, f"error: {type(exc).__name__}: {str(exc)[:200]}")
    result.notes.append(f"Each show/list step stops issuing requests after {p.meta_step_seconds:g} s; "
                        "requests = how many completed.")
    result.notes.append("The client is Python (http.client, threads): at thousands of req/s it, not the server, may be the limit.")
    return result
