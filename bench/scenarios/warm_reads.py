"""Scenario 2, warm reads: N nodes read one image every system already holds, vs nginx sendfile.

Loopback speed is capped by the clients on 2 cores (each node hashes sha512), so the
stable comparison is server CPU seconds per GB served; aggregate MB/s is shown too.
"""

from __future__ import annotations

from typing import Any

from ..clients import Fetch, run_downloads
from ..images import make_image
from ..runner import RunContext, ScenarioResult, summarize
from ..systems.base import ImageFile, NotSupported, System

__all__ = ["run"]

NAME = "warm_reads"
SYSTEMS = ("nginx-direct", "imgproxy-1w", "imgproxy-2w", "glance", "nginx-slice-lock")


def _warm_url(ctx: RunContext, system: System, local: ImageFile, remote: ImageFile) -> str:
    """nginx caches warm up through the upstream; the others take an upload (or a local file)."""
    try:
        return system.warm_url(local)
    except NotSupported:
        url = system.cold_url(remote, ctx.upstream.url_for(remote))
        run = run_downloads([Fetch(url, remote.sha512, remote.size)])
        if not run.results[0]["ok"]:
            raise NotSupported(f"warming read failed: {run.results[0]['error']}")
        return url


def _step(ctx: RunContext, system: System, url: str, image: ImageFile, nodes: int) -> dict[str, Any]:
    with ctx.metered(system) as usage:
        run = run_downloads([Fetch(url, image.sha512, image.size) for _ in range(nodes)], timeout=600)
    bad = [r for r in run.results if not r["ok"]]
    served = sum(r["bytes"] for r in run.results)
    return {
        "aggregate_MBps": round(served / run.wall / 1e6, 1),
        "total_s": round(run.wall, 3),
        "server_cpu_s_per_GB": round(usage.cpu_s / (served / 1e9), 3) if served else None,
        "client_cpu_s": round(run.cpu_s, 2),
        "peak_rss_MiB": round(usage.peak_rss / (1 << 20), 1),
        "failures": len(bad),
        "failure_detail": bad[0]["error"] if bad else "",
    }


def run(ctx: RunContext) -> ScenarioResult:
    p = ctx.profile
    result = ScenarioResult(
        NAME,
        f"Warm reads: N nodes read one cached {p.warm_image_size >> 20} MiB image",
        ["system", "N", "aggregate_MBps", "vs_nginx", "server_cpu_s_per_GB", "total_s", "failures", "peak_rss_MiB", "status"],
        plot={"x": "N", "y": "aggregate_MBps", "series": "system", "ylabel": "aggregate MB/s"},
    )
    ctx.local_root.mkdir(parents=True, exist_ok=True)
    local = make_image(ctx.local_root, "warm.img", p.warm_image_size)
    remote = make_image(ctx.upstream_root, "warm-remote.img", p.warm_image_size)
    ceiling: dict[int, float] = {}
    for name in SYSTEMS:
        system = ctx.system_or_row(result, name)
        if system is None:
            continue
        ctx.progress.step(f"{name}: warming")
        try:
            url = _warm_url(ctx, system, local, remote)
        except NotSupported as exc:
            result.not_run(name, str(exc))
            continue
        except Exception as exc:
            result.not_run(name, f"error: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        image = remote if url.endswith("/warm-remote.img") else local
        for n in p.warm_nodes:
            ctx.progress.step(f"{name} N={n}")
            samples = [_step(ctx, system, url, image, n) for _ in range(p.repeats)]
            row = {"system": name, "N": n, **summarize(samples, ("aggregate_MBps",))}
            if name == "nginx-direct":
                ceiling[n] = row["aggregate_MBps"]
            if ceiling.get(n):
                row["vs_nginx"] = round(row["aggregate_MBps"] / ceiling[n], 2)
            result.add_checked(row, samples, ctx.progress, label=f"{name} N={n}", what="nodes got wrong bytes")
    result.notes.append("Each node hashes sha512 (~0.7 GB/s per core): the clients cap MB/s on 2 cores; compare server_cpu_s_per_GB.")
    return result
