"""Upstream faults: the service reads images from a store that misbehaves, then heals.

Images are registered by location (with validation data, as an operator who knows the
digests would) on a fault-injecting server (``bench/servers/faulty.py``). For each fault
(stall, reset mid-body, 503, truncated body, wrong bytes, Range ignored, slow drip) the
cache is emptied, the fault is switched on, and clients read whole images and ranges;
then the store heals and every image is read again. What must hold:

- never a complete 200 with wrong or missing bytes (a failed read is a clean error or a cut
  connection; a wrong image may be ``killed``, as Glance kills an image whose data fails);
- no request hangs past the client's timeout, and the service stays up;
- after healing, every image that is still active downloads with its right digest: nothing
  wrong was cached.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ..servers.faulty import FaultyServer
from ..systems.imgproxy import ImgproxySystem

__all__ = ["FaultReport", "run_faults", "FAULT_KINDS"]

CHUNK = 64 * 1024
FAULT_KINDS = ("stall", "reset", "503", "truncate", "wrong", "norange", "drip")


@dataclass
class FaultReport:
    faults_tried: int = 0
    reads: int = 0
    clean_errors: int = 0
    good_reads: int = 0
    killed: int = 0
    bytes_verified: int = 0
    violations: list[str] = field(default_factory=list)

    def as_row(self) -> dict[str, object]:
        return {"faults_tried": self.faults_tried, "reads": self.reads, "good_reads": self.good_reads,
                "clean_errors": self.clean_errors, "killed": self.killed,
                "bytes_verified": self.bytes_verified, "violations": len(self.violations)}


def _read(http: httpx.Client, image_id: str, headers: dict[str, str]) -> tuple[int, bytes, bool]:
    """(status, body, complete): complete means the body ended cleanly at its declared length."""
    try:
        with http.stream("GET", f"/v2/images/{image_id}/file", headers=headers) as r:
            body = b"".join(r.iter_bytes())
            declared = r.headers.get("content-length")
            return r.status_code, body, declared is None or int(declared) == len(body)
    except (httpx.HTTPError, OSError):
        return 0, b"", False


def run_faults(work: Path, *, images: int = 3, reads: int = 4, seed: int = 1,
               log: Callable[[str], None] = print) -> FaultReport:
    rng = random.Random(seed)
    report = FaultReport()
    store = FaultyServer().start()
    system = ImgproxySystem(work / "imgproxy", workers=1, config={
        "chunk_size": CHUNK, "cache_max_size": 64 << 20, "prune_interval": 0, "clean_interval": 0,
        "prefetch_interval": 0, "upstream_timeout": 1, "upstream_retries": 2,
    })
    try:
        system.start()
        http = httpx.Client(base_url=system.url, timeout=httpx.Timeout(30.0, connect=5.0))
        for kind in FAULT_KINDS:
            report.faults_tried += 1
            data: dict[str, bytes] = {}
            for n in range(images):
                name = f"{kind}-{n}"
                blob = rng.randbytes(rng.choice([CHUNK // 2, 3 * CHUNK + 11, 6 * CHUNK]))
                store.objects[name] = blob
                image_id = http.post("/v2/images", json={"name": name, "disk_format": "raw",
                                                         "container_format": "bare"}).json()["id"]
                r = http.post(f"/v2/images/{image_id}/locations", json={
                    "url": store.location("x", name),
                    "validation_data": {"os_hash_algo": "sha512", "os_hash_value": hashlib.sha512(blob).hexdigest()}})
                if r.status_code != 202:
                    report.violations.append(f"{kind}: adding location {name} answered {r.status_code}")
                    continue
                data[image_id] = blob
                store.faults[name] = kind
            for image_id, blob in data.items():
                for k in range(reads):
                    headers = {}
                    want = blob
                    if k % 2 and len(blob) > 10:
                        start = rng.randrange(0, len(blob) - 1)
                        end = rng.randrange(start, len(blob))
                        headers["Range"] = f"bytes={start}-{end}"
                        want = blob[start:end + 1]
                    began = time.monotonic()
                    status, body, complete = _read(http, image_id, headers)
                    report.reads += 1
                    if time.monotonic() - began > 25:
                        report.violations.append(f"{kind}: a read took {time.monotonic() - began:.0f} s")
                    if status == 200 and complete and body != blob:
                        report.violations.append(f"{kind}: a complete 200 with wrong bytes ({len(body)} of {len(blob)})")
                    elif status in (200, 206) and complete and body == want:
                        report.good_reads += 1
                    else:
                        report.clean_errors += 1
            if http.get("/versions").status_code not in (200, 300):
                report.violations.append(f"{kind}: the service stopped answering")
            for name in list(store.faults):
                store.faults[name] = "ok"
            for image_id, blob in data.items():
                status = http.get(f"/v2/images/{image_id}").json().get("status")
                if status == "killed":
                    report.killed += 1
                    continue
                code, body, complete = _read(http, image_id, {})
                if code != 200 or not complete or body != blob:
                    report.violations.append(f"{kind}: after healing, image {image_id} reads {code} "
                                             f"{len(body)}/{len(blob)} bytes, {'right' if body == blob else 'wrong'}")
                else:
                    report.bytes_verified += len(body)
            log(f"fault {kind}: {report.as_row()}")
        http.close()
    finally:
        system.stop()
        store.stop()
    return report
