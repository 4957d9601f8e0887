"""Scenario "edge": N compute nodes boot from one image through an imgproxy edge in front of a central
image API (imgproxy, or the real Glance), vs the same nodes reading the central service directly.

For each central kind: the image is uploaded to the central service; N curls read it straight from
there (``direct``), then N curls read it through a fresh edge (``--upstream-api``, cold cache).
``central_ratio`` is what the central service sent during the step, over the image size (bytes its
process tree wrote, from ``/proc/PID/io``): through the edge the target is 1.00 (one upstream read
per byte, whatever N); directly it is about N. ``total_s`` is the wall time of the step.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..images import make_image
from ..runner import RunContext, ScenarioResult
from ..systems.base import ImageFile
from ..systems.glance import GlanceSystem, venv_ready
from ..systems.imageapi import ImageApiSystem
from ..systems.imgproxy import ImgproxySystem
from ..systems.procs import tree_pids
from .cached_download import curl_many

__all__ = ["run"]

NAME = "edge"
SYSTEMS: tuple[str, ...] = ()  # starts its own central services and edges


def _written(pid: int | None) -> int:
    """Bytes the process tree of ``pid`` has written (sockets included) so far."""
    total = 0
    for p in tree_pids(pid) if pid else []:
        try:
            for line in Path(f"/proc/{p}/io").read_text().splitlines():
                if line.startswith("wchar:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def _step(central: ImageApiSystem, url: str, n: int, image: ImageFile) -> dict[str, Any]:
    before = _written(central.pid)
    clients = curl_many(url, n, timeout=1800)
    sent = _written(central.pid) - before
    bad = [c for c in clients if not c["ok"] or c["bytes"] != image.size]
    totals = [c["total"] for c in clients if c["ok"]]
    return {"total_s": round(max(totals, default=0.0), 2), "central_ratio": round(sent / image.size, 2),
            "failures": len(bad), "detail": (bad[0].get("error") or f"{bad[0].get('bytes')} bytes") if bad else ""}


def _central(kind: str, root: Path) -> ImageApiSystem:
    if kind == "glance":
        return GlanceSystem(root, processes=2)
    return ImgproxySystem(root, workers=1, config={"prune_interval": 0, "clean_interval": 0})


def run(ctx: RunContext) -> ScenarioResult:
    p = ctx.profile
    n, size = p.edge_nodes, p.edge_image_size
    result = ScenarioResult(
        NAME, f"Edge: {n} nodes read one {size >> 20} MiB image through an edge vs straight from the central service",
        ["central", "path", "nodes", "total_s", "central_ratio", "failures", "status"],
        plot={"x": "central", "series": "path", "panels": [
            {"y": "total_s", "ylabel": f"total time, {n} nodes (s)"},
            {"y": "central_ratio", "ylabel": "bytes the central service sent / image size"},
        ]},
    )
    if shutil.which("curl") is None:
        result.not_run("all", "curl is not installed")
        return result
    image = make_image(ctx.work / "edge-files", "edge.img", size)
    try:
        for kind in ("imgproxy", "glance"):
            if kind == "glance" and not venv_ready():
                result.not_run(kind, "the Glance venv is missing: python -m bench setup-glance")
                continue
            ctx.progress.step(f"{kind}: central + image")
            central = _central(kind, ctx.work / f"edge-central-{kind}")
            central.start()
            edge: ImgproxySystem | None = None
            try:
                image_id = central.create_image(image.name)
                central.upload(image_id, image.path)
                ctx.progress.step(f"{kind}: {n} nodes straight from the central service")
                rows = {"direct": _step(central, central.file_url(image_id), n, image)}
                edge = ImgproxySystem(ctx.work / f"edge-{kind}", workers=1, config={
                    "upstream_api": central.url, "prune_interval": 0, "clean_interval": 0})
                edge.start()
                ctx.progress.step(f"{kind}: {n} nodes through a cold edge")
                rows["edge"] = _step(central, f"{edge.url}/v2/images/{image_id}/file", n, image)
            except Exception as exc:  # one central kind failing must not hide the other
                result.not_run(kind, f"error: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            finally:
                if edge is not None:
                    edge.stop()
                central.stop()
            for path, row in rows.items():
                status = "ok" if not row["failures"] else f"FAILED: {row['failures']} nodes: {row['detail']}"
                if row["failures"]:
                    result.failures.append(f"edge {kind} {path}: {row['failures']} nodes got wrong bytes")
                result.rows.append({"central": kind, "path": path, "nodes": n, "total_s": row["total_s"],
                                    "central_ratio": row["central_ratio"], "failures": row["failures"],
                                    "status": status})
    finally:
        image.path.unlink(missing_ok=True)
    result.notes.append("Target (issue 8): central_ratio 1.00 through the edge (the central service sends each "
                        "byte once, however many nodes boot); direct, it sends the image once per node.")
    return result
