"""Disk full: the cache and the file store on small tmpfs mounts, filled to the last byte.

What must hold: an upload that does not fit fails with a clear JSON error and keeps nothing
(the image stays ``queued``, no partial file in the store); images already stored still
download whole (the cache, full itself, serves them from the store uncached); once space
returns (images deleted), uploads work again without a restart.

Needs ``mount -t tmpfs`` (root, or CAP_SYS_ADMIN); :func:`can_mount` tells.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ..systems.imgproxy import ImgproxySystem

__all__ = ["DiskFullReport", "run_disk_full", "can_mount"]

OCTET = {"Content-Type": "application/octet-stream"}


@dataclass
class DiskFullReport:
    uploads_ok: int = 0
    uploads_refused: int = 0
    refusal_statuses: list[int] = field(default_factory=list)
    reads_ok: int = 0
    recovered: bool = False
    violations: list[str] = field(default_factory=list)

    def as_row(self) -> dict[str, object]:
        return {"uploads_ok": self.uploads_ok, "uploads_refused": self.uploads_refused,
                "refusal_statuses": sorted(set(self.refusal_statuses)), "reads_ok": self.reads_ok,
                "recovered": self.recovered, "violations": len(self.violations)}


def _mount(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                   capture_output=True)


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def can_mount(work: Path) -> bool:
    probe = work / "mount-probe"
    try:
        _mount(probe, "1m")
    except (subprocess.CalledProcessError, OSError):
        return False
    _umount(probe)
    return True


def _files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def run_disk_full(work: Path, *, seed: int = 1, log: Callable[[str], None] = print) -> DiskFullReport:
    rng = random.Random(seed)
    report = DiskFullReport()
    system = ImgproxySystem(work / "imgproxy", workers=1, config={
        "chunk_size": 64 * 1024, "cache_max_size": 256 << 20, "prune_interval": 0, "clean_interval": 0,
        "prefetch_interval": 0,
    })
    images_dir, cache_dir = system.data_dir / "images", system.data_dir / "cache"
    _mount(images_dir, "6m")
    _mount(cache_dir, "3m")
    try:
        system.start()
        http = httpx.Client(base_url=system.url, timeout=60)
        stored: dict[str, bytes] = {}
        refused: list[str] = []
        for n in range(12):  # 12 x 1 MiB into a 6 MiB store
            data = rng.randbytes(1 << 20)
            image_id = http.post("/v2/images", json={"name": f"full{n}", "disk_format": "raw",
                                                     "container_format": "bare"}).json()["id"]
            r = http.put(f"/v2/images/{image_id}/file", content=data, headers=OCTET)
            if r.status_code == 204:
                stored[image_id] = data
                report.uploads_ok += 1
                continue
            report.uploads_refused += 1
            report.refusal_statuses.append(r.status_code)
            refused.append(image_id)
            # Glance answers a full store with 413 "Image storage media is full".
            if r.status_code != 413 or "error" not in r.json() or str(work) in r.text:
                report.violations.append(f"a full store answered {r.status_code}: {r.text[:200]}")
            if http.get(f"/v2/images/{image_id}").json().get("status") != "queued":
                report.violations.append(f"image {image_id} is not queued after its upload was refused")
        leftovers = [name for name in _files(images_dir) if name not in stored]
        if leftovers:
            report.violations.append(f"the store keeps files of refused uploads: {leftovers}")
        for image_id, data in stored.items():
            r = http.get(f"/v2/images/{image_id}/file")
            if r.status_code == 200 and hashlib.sha512(r.content).digest() == hashlib.sha512(data).digest():
                report.reads_ok += 1
            else:
                report.violations.append(f"stored image {image_id} reads {r.status_code}, {len(r.content)} bytes")
        for image_id in list(stored)[:3]:
            http.delete(f"/v2/images/{image_id}")
        if refused:
            data = rng.randbytes(1 << 20)
            r = http.put(f"/v2/images/{refused[0]}/file", content=data, headers=OCTET)
            report.recovered = r.status_code == 204 and http.get(f"/v2/images/{refused[0]}/file").content == data
            if not report.recovered:
                report.violations.append(f"after space returned, an upload answered {r.status_code}: {r.text[:200]}")
        log(f"disk full: {report.as_row()}")
        http.close()
    finally:
        system.stop()
        _umount(cache_dir)
        _umount(images_dir)
    return report
