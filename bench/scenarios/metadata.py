"""Scenario 5, metadata: the same N images in every system, then image show and image list
(limit=100; and filtered + sorted by name) driven by wrk, a C load generator.

Every system gets ``meta_images`` images through its API (concurrency 16; Glance creates
~15/s), then each call is driven by wrk for ``meta_step_seconds`` over each of
``meta_connections`` connections (show: a random image of the N each request), the systems
taking turns step by step. Rows give requests/s, latency p50/p99, the server's CPU per
request, and the ratio to Glance's requests/s for the same call in the same run. With
``meta_baseline`` (``--baseline DIR``), the imgproxy checkout in DIR runs beside this one as
``baseline-1w``/``baseline-2w``: before/after figures from one run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..clients import run_requests
from ..runner import RunContext, ScenarioResult, summarize
from ..systems.imageapi import ImageApiSystem
from ..systems.imgproxy import ImgproxySystem
from ..wrk import WrkUnavailable, run_wrk, wrk_binary

__all__ = ["run"]

NAME = "metadata"
SYSTEMS = ("imgproxy-1w", "imgproxy-2w", "glance")
BASELINES = ("baseline-1w", "baseline-2w")
FILTERED = "/v2/images?limit=100&disk_format=raw&container_format=bare&status=queued&sort_key=name&sort_dir=asc"
OPS = ("show", "list-100", "list-100-filtered")


def _create(ctx: RunContext, result: ScenarioResult, name: str, system: ImageApiSystem) -> list[str]:
    count = ctx.profile.meta_images
    ctx.progress.step(f"{name}: create {count}")
    body = [("POST", "/v2/images", {"name": f"meta-{name}-{i:06d}", "disk_format": "raw", "container_format": "bare",
                                    "tags": [f"t{i % 10}"]}) for i in range(count)]
    with ctx.metered(system) as usage:
        created = run_requests(system.url, body, concurrency=16, headers=system.headers, timeout=60, keep_bodies=True)
    done = sum(1 for r in created.results if "latency" in r)
    ids = [json.loads(r["body"])["id"] for r in created.results if "body" in r]
    status = "ok" if not created.errors else f"errors: {created.errors[0][:120]}"
    if created.errors and len(ids) < count:
        # Glance on sqlite answers some concurrent creates with 500 (database locked): the
        # rest are made one at a time, so every system lists the same number of images.
        again = run_requests(system.url, body[: count - len(ids)], concurrency=1, headers=system.headers, timeout=60,
                             keep_bodies=True)
        ids += [json.loads(r["body"])["id"] for r in again.results if "body" in r]
        if len(ids) == count:
            status = f"ok ({len(created.errors)} failed at concurrency 16: {created.errors[0][:80]}; made again one at a time)"
    result.rows.append({
        "system": name, "op": "create", "images": len(ids), "connections": 16, "requests": done,
        "req_per_s": round(done / created.wall, 1) if created.wall else None, "errors": len(created.errors),
        "server_cpu_us_per_req": round(usage.cpu_s / done * 1e6) if done else None,
        "peak_rss_MiB": round(usage.peak_rss / (1 << 20), 1), "status": status,
    })
    return ids


def _step(ctx: RunContext, name: str, system: ImageApiSystem, op: str, paths: list[str], conns: int) -> dict[str, Any]:
    p = ctx.profile
    ctx.progress.step(f"{name}: {op} wrk -c{conns} {p.meta_step_seconds:g}s")
    with ctx.metered(system) as usage:
        run = run_wrk(system.url, paths, connections=conns, seconds=p.meta_step_seconds, headers=system.headers,
                      work=ctx.work / "wrk" / name)
    return {
        "system": name, "op": op, "images": len(paths) if op == "show" else p.meta_images, "connections": conns,
        "requests": run.requests, "req_per_s": round(run.req_per_s, 1), "p50_ms": run.p50_ms, "p99_ms": run.p99_ms,
        "errors": run.errors, "server_cpu_us_per_req": round(usage.cpu_s / run.requests * 1e6) if run.requests else None,
        "peak_rss_MiB": round(usage.peak_rss / (1 << 20), 1),
        "status": "ok" if not run.errors else f"errors: {run.non_2xx} non-2xx, sockets {run.socket_errors}",
    }


def _measure(ctx: RunContext, result: ScenarioResult, ready: list[tuple[str, ImageApiSystem, list[str]]]) -> None:
    """Every step of every system, the systems taking turns within each step (and the steps
    repeated ``repeats`` times), so a machine whose load changes over the run changes
    every system's figures alike."""
    p = ctx.profile
    samples: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for _ in range(p.repeats):
        for op in OPS:
            for conns in p.meta_connections:
                for name, system, ids in ready:
                    paths = {"show": [f"/v2/images/{i}" for i in ids], "list-100": ["/v2/images?limit=100"],
                             "list-100-filtered": [FILTERED]}[op]
                    try:
                        row = _step(ctx, name, system, op, paths, conns)
                    except Exception as exc:
                        row = {"system": name, "op": op, "connections": conns,
                               "status": f"error: {type(exc).__name__}: {str(exc)[:200]}"}
                    samples.setdefault((name, op, conns), []).append(row)
    for name, _, _ in ready:
        for op in OPS:
            for conns in p.meta_connections:
                rows = samples[(name, op, conns)]
                ok = [r for r in rows if "req_per_s" in r]
                if not ok:
                    result.rows.append(rows[0])
                    continue
                row = summarize(ok, spread=("req_per_s",))
                bad = [r["status"] for r in ok if r["status"] != "ok"]
                row["status"] = bad[0] if bad else "ok"
                result.rows.append(row)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """``vs_glance``: a row's requests/s over Glance's for the same call and connections."""
    glance = {(r["op"], r["connections"]): r["req_per_s"] for r in rows
              if r["system"] == "glance" and r.get("req_per_s") and r.get("status") == "ok"}
    for row in rows:
        anchor = glance.get((row.get("op"), row.get("connections")))
        row["vs_glance"] = round(row["req_per_s"] / anchor, 1) if anchor and row.get("req_per_s") else None


def _baseline(ctx: RunContext, name: str) -> ImgproxySystem:
    workers = int(name.split("-")[1].rstrip("w"))
    system = ImgproxySystem(ctx.work / "systems" / name, workers=workers, source=Path(ctx.profile.meta_baseline),
                            name=name)
    ctx.add_system(name, system)
    return system


def run(ctx: RunContext) -> ScenarioResult:
    p = ctx.profile
    result = ScenarioResult(
        NAME, f"Metadata: {p.meta_images} images, then show / list-100 driven by wrk",
        ["system", "op", "images", "connections", "requests", "req_per_s", "req_per_s_min", "req_per_s_max",
         "vs_glance", "p50_ms", "p99_ms", "errors", "server_cpu_us_per_req", "peak_rss_MiB", "status"],
        plot={"x": "op", "y": "req_per_s", "series": "system", "split": "connections", "ylabel": "requests/s"},
    )
    try:
        wrk_binary()
    except WrkUnavailable as exc:
        result.not_run("all", str(exc))
        return result
    names = [*SYSTEMS, *(BASELINES if p.meta_baseline else ())]
    ready: list[tuple[str, ImageApiSystem, list[str]]] = []
    for name in names:
        if ctx.only_systems and name not in ctx.only_systems and name not in BASELINES:
            continue
        try:
            system = _baseline(ctx, name) if name in BASELINES else ctx.system_or_row(result, name)
            if system is None:
                continue
            assert isinstance(system, ImageApiSystem)
            ids = _create(ctx, result, name, system)
            if ids:
                ready.append((name, system, ids))
        except Exception as exc:
            result.not_run(name, f"error: {type(exc).__name__}: {str(exc)[:200]}")
    _measure(ctx, result, ready)
    for name in BASELINES:
        ctx.stop_system(name, remove=True)
    add_ratios(result.rows)
    result.notes.append(f"wrk drives each step for {p.meta_step_seconds:g} s, the systems taking turns, "
                        f"{p.repeats} time(s) (figures: medians, min/max of req/s); show picks one of the "
                        f"{p.meta_images} images at random per request; callers are admins (Glance without Keystone).")
    result.notes.append("server_cpu_us_per_req: CPU seconds of the server's process tree over the step per request.")
    return result
