"""Scenario 4, upload: ``PUT /v2/images/{id}/file`` of a large image with curl, MB/s.

The limit is the machine's md5+sha512 speed on one core (a one-pass upload must compute
both); it is measured in the same run and shown next to each result. The ``floor`` row is
the same curl against :class:`~bench.systems.digest_sink.DigestSink`, a server that only
receives and digests (nothing stored): the most any upload can reach on this machine, taking
its turn with the real systems. ``vs_glance`` = MB/s / Glance's MB/s in the same run.

The machine's own speed drifts by more than imgproxy's worker counts differ (the floor itself
ran 414-523 MB/s over three repeats of one run), so two columns compare uploads of the same
repeat, a minute apart, and give the median of those ratios: ``of_floor`` (MB/s over the
floor's) and, for imgproxy-2w, ``vs_1w`` (MB/s over imgproxy-1w's).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import statistics
import subprocess
from collections.abc import Callable
from typing import Any

from ..images import hash_speed, make_image
from ..runner import RunContext, ScenarioResult, summarize
from ..systems.base import NotSupported, SystemUnavailable
from ..systems.digest_sink import DigestSink
from ..systems.imageapi import ImageApiSystem

__all__ = ["run"]

NAME = "upload"
SYSTEMS = ("imgproxy-1w", "imgproxy-2w", "glance")


def _curl_put(url: str, path: str, headers: dict[str, str]) -> tuple[int, float, bytes]:
    """Stream the file with curl (Content-Length set); returns (HTTP status, seconds, response body)."""
    args = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code} %{time_total}", "-X", "PUT", "-T", path,
            "-H", "Content-Type: application/octet-stream", "-H", "Expect:"]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    out = subprocess.run(args + [url], capture_output=True, timeout=1800)
    body, _, tail = out.stdout.rpartition(b"\n")
    code, seconds = tail.decode().split()
    return int(code), float(seconds), body


def _step(ctx: RunContext, system: ImageApiSystem, image: Any) -> dict[str, Any]:
    image_id = system.create_image(f"upload-{image.size}")
    with ctx.metered(system) as usage:
        code, seconds, _ = _curl_put(f"{system.url}/v2/images/{image_id}/file", str(image.path), system.headers)
    if code in (404, 405, 501):
        raise NotSupported(f"PUT /v2/images/{{id}}/file answered {code}")
    body = system.wait_active(image_id, timeout=30) if code < 300 else {}
    # Multi-GiB uploads add up (store + cache, per repeat and system): free the space now.
    system.delete_image(image_id)
    return _sample(image, code, seconds, body, usage)


def _floor_step(ctx: RunContext, sink: DigestSink, image: Any) -> dict[str, Any]:
    with ctx.metered(sink) as usage:
        code, seconds, answer = _curl_put(f"{sink.url}/floor", str(image.path), {})
    return _sample(image, code, seconds, json.loads(answer) if code == 200 else {}, usage)


def _sample(image: Any, code: int, seconds: float, body: dict[str, Any], usage: Any) -> dict[str, Any]:
    ok = code in (200, 201, 204) and body.get("os_hash_value") == image.sha512 and body.get("checksum") == image.md5
    return {
        "MBps": round(image.size / seconds / 1e6, 1), "seconds": round(seconds, 2), "http": code,
        "digests_ok": ok, "server_cpu_s": usage.cpu_s, "peak_rss_MiB": round(usage.peak_rss / (1 << 20), 1),
    }


def _row(result: ScenarioResult, name: str, size: int, samples: list[dict[str, Any]], limit: float) -> dict[str, Any]:
    row: dict[str, Any] = {"system": name, "size_MiB": size >> 20, **summarize(samples, ("MBps",))}
    good = [s for s in samples if s["http"] < 300]
    wrong = [s for s in good if not s["digests_ok"]]
    codes = sorted({s["http"] for s in samples})
    row["http"] = ",".join(str(c) for c in codes)
    row["digests_ok"] = not wrong and bool(good)
    if good:  # throughput of the uploads that were accepted
        row.update(summarize([{k: s[k] for k in ("MBps", "seconds")} for s in good], ("MBps",)))
        row["repeats"] = len(samples)
    row["vs_hash_limit"] = round(row["MBps"] / limit, 2)
    if wrong:
        row["status"] = f"FAILED: wrong digests in {len(wrong)}/{len(samples)}"
        result.failures.append(f"upload {name} {size >> 20} MiB: wrong digests after HTTP {row['http']}")
    elif len(good) < len(samples):
        row["status"] = f"refused {len(samples) - len(good)}/{len(samples)}: HTTP {row['http']}"
    else:
        row["status"] = "ok"
    return row


def run(ctx: RunContext) -> ScenarioResult:
    p = ctx.profile
    limit = hash_speed(64 << 20)["md5+sha512"]
    result = ScenarioResult(
        NAME, f"Upload with curl; hashing limit md5+sha512 on one core = {limit} MB/s",
        ["system", "size_MiB", "MBps", "vs_hash_limit", "seconds", "http", "digests_ok", "server_cpu_s", "peak_rss_MiB",
         "vs_glance", "of_floor", "vs_1w", "status"],
        plot={"x": "size_MiB", "y": "MBps", "series": "system", "ylabel": "upload MB/s"},
    )
    if shutil.which("curl") is None:
        result.not_run("all", "curl is not installed")
        return result
    steps = _steps(ctx, result)
    for size in p.upload_sizes:
        image = make_image(ctx.work / "upload-files", f"upload-{size}.img", size)
        try:
            # Systems take turns within each repeat, so a slow minute of a shared machine does not
            # fall on one system's repeats, in orders that put each system before and after each
            # other alike (_turns): an upload right after another system's upload and delete may
            # find the disk still busy with those files (1 GiB, imgproxy with 2 workers then 1 in 4
            # pairs: the second 4-14% slower each time; 1 then 2: slower once in 4). Each upload
            # also starts on a settled disk (os.sync, not timed).
            samples: dict[str, list[dict[str, Any]]] = {name: [] for name in steps}
            for repeat in range(p.repeats):
                for name in _turns(list(steps), repeat):
                    if name not in samples:
                        continue
                    step = steps[name]
                    ctx.progress.step(f"{name} {size >> 20} MiB")
                    os.sync()
                    try:
                        samples[name].append(step(image))
                    except NotSupported as exc:
                        result.not_run(name, str(exc), size_MiB=size >> 20)
                        del samples[name]
                    except Exception as exc:
                        result.not_run(name, f"error: {type(exc).__name__}: {str(exc)[:200]}", size_MiB=size >> 20)
                        del samples[name]
            rows = [_row(result, name, size, taken, limit) for name, taken in samples.items()]
            glance = next((r["MBps"] for r in rows if r["system"] == "glance" and r["status"] == "ok"), None)
            for row in rows:
                row["vs_glance"] = round(row["MBps"] / glance, 2) if glance else None
                if row["system"] != "floor":
                    row["of_floor"] = _paired(samples, row["system"], "floor")
            if "imgproxy-2w" in samples:
                next(r for r in rows if r["system"] == "imgproxy-2w")["vs_1w"] = _paired(samples, "imgproxy-2w", "imgproxy-1w")
            result.rows.extend(rows)
        finally:
            image.path.unlink(missing_ok=True)
    if "floor" in steps:
        result.notes.append("floor: the same curl against a server that only receives the body and computes md5 "
                            "and sha512 on two threads, storing nothing (bench/systems/digest_sink.py): what no "
                            "upload can beat on this machine. vs_glance: MB/s over Glance's in the same run. of_floor, "
                            "vs_1w: the median over repeats of MB/s over the floor's, and over imgproxy-1w's, in the "
                            "same repeat.")
    return result


def _paired(samples: dict[str, list[dict[str, Any]]], name: str, base: str) -> float | None:
    """Median over repeats of ``name``'s MB/s over ``base``'s in the same repeat (both accepted);
    None without a repeat where both were."""
    ratios = [mine["MBps"] / theirs["MBps"] for mine, theirs in zip(samples.get(name, ()), samples.get(base, ()))
              if mine["http"] < 300 and theirs["http"] < 300]
    return round(statistics.median(ratios), 3) if ratios else None


def _turns(names: list[str], repeat: int) -> list[str]:
    """The order of ``repeat``: a rotation of ``names`` (one step per pair of repeats), reversed
    in odd repeats, so whoever follows a system in one repeat precedes it in the next."""
    shift = (repeat // 2) % len(names)
    order = names[shift:] + names[:shift]
    return order[::-1] if repeat % 2 else order


def _steps(ctx: RunContext, result: ScenarioResult) -> dict[str, Callable[[Any], dict[str, Any]]]:
    """What one upload is for each system that started: the Image API systems, then the floor."""
    steps: dict[str, Callable[[Any], dict[str, Any]]] = {}
    for name in SYSTEMS:
        system = ctx.system_or_row(result, name)
        if system is not None:
            assert isinstance(system, ImageApiSystem)
            steps[name] = functools.partial(_step, ctx, system)
    if not ctx.only_systems or "floor" in ctx.only_systems:
        try:
            sink = ctx.add_system("floor", DigestSink(ctx.work / "systems" / "floor"))
        except SystemUnavailable as exc:
            result.not_run("floor", str(exc))
        else:
            assert isinstance(sink, DigestSink)
            steps["floor"] = functools.partial(_floor_step, ctx, sink)
    return steps
