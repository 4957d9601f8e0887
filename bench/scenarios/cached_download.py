"""Scenario "cached_download": one cached image read by N parallel curls, vs nginx sendfile.

The issue-3 download targets at full size (``--size 1GiB``): aggregate MB/s at 1 and 32
streams as a ratio to nginx serving the same bytes from a file, the server's CPU seconds
per GB, its peak RSS (summed over the process tree) while serving, and fairness with one
worker: every client's time to first byte and the spread of finish times.

curl writes to /dev/null and hashes nothing: a Python client (or a sha512 per node, as
``warm_reads`` does) caps loopback throughput well below what the server can send
(anchors/limits.md). The bytes themselves are checked once per system by a sha512 read
(``bench.clients``) before the timed steps, and every timed curl must receive exactly the
image size.
With ``--baseline DIR`` the imgproxy checkout in DIR also runs, as ``baseline-1w`` (one
worker), taking its turn in every repeat: before/after figures from one run.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from ..clients import Fetch, run_downloads
from ..images import make_image
from ..runner import RunContext, ScenarioResult, percentile, summarize
from ..systems.base import ImageFile, NotSupported, System
from ..systems.imgproxy import ImgproxySystem

__all__ = ["run", "curl_many"]

NAME = "cached_download"
# imgproxy-1w-nometrics: metrics = false and request_log = false, to read their cost off imgproxy-1w.
SYSTEMS = ("nginx-direct", "imgproxy-1w", "imgproxy-1w-nometrics", "imgproxy-2w")
BASELINE = "baseline-1w"


def curl_many(url: str, n: int, timeout: float) -> list[dict[str, Any]]:
    """Start ``n`` curls at once (to /dev/null); per client: status, bytes, ttfb, total (s)."""
    fmt = "%{http_code} %{size_download} %{time_starttransfer} %{time_total}"
    procs = [
        subprocess.Popen(["curl", "-sS", "-o", "/dev/null", "-m", str(int(timeout)), "-w", fmt, url],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(n)
    ]
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, stderr = p.communicate()
        fields = stdout.decode().split()
        if p.returncode != 0 or len(fields) != 4:
            out.append({"ok": False, "error": f"curl exit {p.returncode}: {stderr.decode(errors='replace')[-200:]}"})
            continue
        code, size, ttfb, total = int(fields[0]), int(fields[1]), float(fields[2]), float(fields[3])
        out.append({"ok": code == 200, "status": code, "bytes": size, "ttfb": ttfb, "total": total,
                    "error": "" if code == 200 else f"HTTP {code}"})
    return out


def _step(ctx: RunContext, system: System, url: str, image: ImageFile, n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    with ctx.metered(system) as usage:
        clients = curl_many(url, n, timeout=900)
    wall = time.perf_counter() - t0
    bad = [c for c in clients if not c["ok"] or c["bytes"] != image.size]
    served = sum(c.get("bytes", 0) for c in clients)
    ttfbs = [c["ttfb"] for c in clients if c["ok"]]
    totals = [c["total"] for c in clients if c["ok"]]
    return {
        "aggregate_MBps": round(served / wall / 1e6, 1),
        "server_cpu_s_per_GB": round(usage.cpu_s / (served / 1e9), 3) if served else None,
        "peak_rss_MiB": round(usage.peak_rss / (1 << 20), 1),
        "ttfb_p50_s": round(percentile(ttfbs, 50) or 0, 3),
        "ttfb_max_s": round(max(ttfbs, default=0), 3),
        "total_min_s": round(min(totals, default=0), 2),
        "total_max_s": round(max(totals, default=0), 2),
        "failures": len(bad),
        "failure_detail": (bad[0].get("error") or f"{bad[0].get('bytes')} bytes") if bad else "",
    }


def _url(system: System, image: ImageFile) -> str:
    url = system.warm_url(image)  # nginx: a file; Image APIs: upload + one whole read
    check = run_downloads([Fetch(url, image.sha512, image.size)], timeout=900)
    if not check.results[0]["ok"]:
        raise NotSupported(f"checking read failed: {check.results[0]['error']}")
    return url


def _add_rows(result: ScenarioResult, ctx: RunContext, n: int, samples: dict[str, list[dict[str, Any]]]) -> None:
    base = summarize(samples["nginx-direct"]) if samples.get("nginx-direct") else None
    for name, runs in samples.items():
        row = {"system": name, "N": n, **summarize(runs, ("aggregate_MBps", "server_cpu_s_per_GB"))}
        if base and base.get("aggregate_MBps"):
            row["vs_nginx"] = round(row["aggregate_MBps"] / base["aggregate_MBps"], 2)
        if base and base.get("server_cpu_s_per_GB") and row.get("server_cpu_s_per_GB"):
            row["cpu_vs_nginx"] = round(row["server_cpu_s_per_GB"] / base["server_cpu_s_per_GB"], 2)
        result.add_checked(row, runs, ctx.progress, label=f"{name} N={n}", what="clients got a wrong body")


def _add_metrics_cost(result: ScenarioResult, n: int, samples: dict[str, list[dict[str, Any]]]) -> None:
    """A note with what metrics and request lines cost: imgproxy-1w's server CPU per GB over
    imgproxy-1w-nometrics's, per repeat (the two ran back to back), and the median of those."""
    on, off = samples.get("imgproxy-1w"), samples.get("imgproxy-1w-nometrics")
    if not on or not off:
        return
    ratios = [a["server_cpu_s_per_GB"] / b["server_cpu_s_per_GB"] - 1 for a, b in zip(on, off)
              if a.get("server_cpu_s_per_GB") and b.get("server_cpu_s_per_GB")]
    if ratios:
        each = ", ".join(f"{x:+.1%}" for x in ratios)
        result.notes.append(f"Metrics + request log cost at N={n} (server CPU per GB, imgproxy-1w over "
                            f"imgproxy-1w-nometrics, per repeat): {each}; median {statistics.median(ratios):+.1%} "
                            "(target: under 3%).")


def run(ctx: RunContext) -> ScenarioResult:
    p = ctx.profile
    size = p.cached_size
    result = ScenarioResult(
        NAME,
        f"Cached download: N curls read one cached {size >> 20} MiB image (to /dev/null)",
        ["system", "N", "aggregate_MBps", "vs_nginx", "server_cpu_s_per_GB", "cpu_vs_nginx", "peak_rss_MiB",
         "ttfb_p50_s", "ttfb_max_s", "total_min_s", "total_max_s", "failures", "status"],
        plot={"x": "N", "series": "system", "panels": [
            {"y": "aggregate_MBps", "ylabel": "aggregate MB/s"},
            {"y": "server_cpu_s_per_GB", "ylabel": "server CPU s per GB"},
        ]},
    )
    if shutil.which("curl") is None:
        result.not_run("all", "curl is not installed")
        return result
    ctx.local_root.mkdir(parents=True, exist_ok=True)
    image = make_image(ctx.local_root, "cached.img", size)
    urls: dict[str, tuple[System, str]] = {}
    for name in (*SYSTEMS, *((BASELINE,) if p.meta_baseline else ())):
        if name == BASELINE:
            system: System | None = ctx.add_system(name, ImgproxySystem(
                ctx.work / "systems" / name, workers=1, source=Path(p.meta_baseline), name=name))
        else:
            system = ctx.system_or_row(result, name)
        if system is None:
            continue
        ctx.progress.step(f"{name}: warming {size >> 20} MiB")
        try:
            urls[name] = (system, _url(system, image))
        except NotSupported as exc:
            result.not_run(name, str(exc))
        except Exception as exc:
            result.not_run(name, f"error: {type(exc).__name__}: {str(exc)[:200]}")
    for n in p.cached_streams:
        # Systems take turns within each repeat, so a slow minute of a shared machine falls on
        # all of them rather than on whichever system ran then; pairs of one repeat are compared.
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name in urls}
        for r in range(p.repeats):
            for name, (system, url) in urls.items():
                ctx.progress.step(f"{name} N={n} ({r + 1}/{p.repeats})")
                samples[name].append(_step(ctx, system, url, image, n))
        _add_rows(result, ctx, n, samples)
        _add_metrics_cost(result, n, samples)
    if p.meta_baseline:
        ctx.stop_system(BASELINE, remove=True)
    result.notes.append("Targets (issue 12): >= 1.0x nginx's throughput at N=1 and N=32, server CPU per GB "
                        "<= 1.3x nginx's, worst time to first byte <= 2x nginx's with one worker; peak RSS "
                        "< 200 MiB at N=32 (issue 3).")
    result.notes.append("On 2 cores the curls share the CPU with the server: server_cpu_s_per_GB is the stable measure.")
    return result
