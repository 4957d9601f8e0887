"""Metadata latency as the registry grows: image-show and list(limit=100) over HTTP.

Fills a fresh data dir with N images directly through :class:`imgproxy.registry.Registry`
(1000 per transaction), starts a real ``imgproxy serve --noauth`` on a loopback port, and
times requests at concurrency 1 and 16 (p50/p99 in ms, requests/s). Lists are timed as an
admin (one index stream) and as a member project (k-way merge of own + public + shared).

    python -m bench.registry_bench --sizes 1000 100000 --requests 400
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from imgproxy.db import open_env
from imgproxy.registry import Registry, format_time

from .systems.imgproxy import ImgproxySystem

PROJECTS = 100
BATCH = 1000


def _records(n: int, seed: int = 1) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    start_us = (time.time_ns() // 1000) - n * 1000
    for i in range(n):
        us = start_us + i * 1000
        iso = format_time(us)
        yield {
            "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "name": f"image-{i}",
            "status": "active",
            "visibility": rng.choice(("private", "private", "shared", "public")),
            "protected": False,
            "os_hidden": False,
            "owner": f"project-{rng.randrange(PROJECTS)}",
            "disk_format": "qcow2",
            "container_format": "bare",
            "min_disk": 0,
            "min_ram": 0,
            "size": 1 << 30,
            "virtual_size": None,
            "checksum": "0" * 32,
            "os_hash_algo": "sha512",
            "os_hash_value": "0" * 128,
            "created_at": iso,
            "updated_at": iso,
            "tags": [f"tag-{i % 10}"],
            "os_distro": "debian",
            "_created_us": us,
            "_locations": [{"url": f"file:///images/{i}", "metadata": {}}],
        }


def fill(data_dir: Path, n: int) -> tuple[list[str], float]:
    """Insert ``n`` images; return some ids and the fill rate (images/s)."""
    env = open_env(data_dir, 8 << 30)
    registry = Registry(env)
    registry.upgrade()  # stamps the empty environment: the server finds its layout current
    ids: list[str] = []
    batch: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for record in _records(n):
        batch.append(record)
        if len(ids) < 2000:
            ids.append(record["id"])
        if len(batch) == BATCH:
            registry.create_many(batch)
            batch = []
    if batch:
        registry.create_many(batch)
    rate = n / (time.perf_counter() - t0)
    env.close()
    return ids, rate


async def _timed(url: str, paths: list[str], concurrency: int, headers: dict[str, str]) -> dict[str, float]:
    latencies: list[float] = []
    queue = list(reversed(paths))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as client:
        for path in paths[: min(20, len(paths))]:  # warm up connections and caches
            (await client.get(path)).raise_for_status()

        async def worker() -> None:
            while queue:
                path = queue.pop()
                t0 = time.perf_counter()
                r = await client.get(path)
                latencies.append(time.perf_counter() - t0)
                r.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "rps": len(latencies) / elapsed,
    }


def run(n: int, requests: int, keep: bool) -> list[str]:
    root = Path(tempfile.mkdtemp(prefix=f"regbench-{n}-"))
    lines = []
    try:
        ids, rate = fill(root / "data", n)
        lines.append(f"n={n}: filled at {rate:,.0f} images/s")
        server = ImgproxySystem(root).start()  # serves root/data, filled above
        try:
            rng = random.Random(2)
            member = {"X-Project-Id": "project-7", "X-Roles": "member"}
            cases = {
                "show": ([f"/v2/images/{rng.choice(ids)}" for _ in range(requests)], {}),
                "list100 admin": (["/v2/images?limit=100"] * requests, {}),
                "list100 member": (["/v2/images?limit=100"] * requests, member),
                "list100 admin marker": ([f"/v2/images?limit=100&marker={rng.choice(ids)}" for _ in range(requests)], {}),
            }
            for name, (paths, headers) in cases.items():
                for concurrency in (1, 16):
                    r = asyncio.run(_timed(server.url, paths, concurrency, headers))
                    lines.append(
                        f"n={n} {name:22s} c={concurrency:<2d} p50={r['p50']:6.2f} ms  p99={r['p99']:6.2f} ms  {r['rps']:7.0f} req/s"
                    )
        finally:
            server.stop()
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--keep", action="store_true", help="keep the data dirs")
    args = parser.parse_args()
    for n in args.sizes:
        for line in run(n, args.requests, args.keep):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
