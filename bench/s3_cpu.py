"""CPU per GB of reading one object from an S3 store, by client (process CPU via getrusage).

    python -m bench.s3_cpu                       # 1 GiB, rclone and nginx, every client
    python -m bench.s3_cpu --size-mib 256 --servers nginx --clients backend,obstore-seq

Clients: ``backend`` (imgproxy's S3Backend, ranged reads of ``--range-mib`` with ``--parallel``
in flight, as the cache's fills make them: presigned URLs over its lean HTTP client),
``backend-obstore`` (the same with ``presigned_ranges = false``: obstore's ranged GETs), ``obstore-seq`` (one plain GET, streamed),
``boto3`` (ranged GETs from ``--parallel`` threads) and ``boto3-seq``.

Servers: ``rclone`` (``rclone serve s3``, a real S3 server; it answers ranges with 200, so
``backend-obstore`` switches to presigned URLs after its first read) and ``nginx`` (files in a
directory: it answers the same GET paths with 206 and ignores the signature, standing in for a
conformant S3 server). Only this process's CPU is counted (obstore's
threads included); the server runs in its own process. Wall times are shown, not compared:
the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import obstore
from obstore.store import S3Store

from backends.base import ByteRange
from backends.s3 import S3Backend
from bench.servers.nginx import NginxServer
from bench.servers.rclone import RcloneS3Server

MiB = 1024 * 1024
BUCKET, KEY = "bench", "image"
ACCESS, SECRET = "imgproxy-bench-access", "imgproxy-bench-secret"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _write_object(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = bytes(range(256)) * (MiB // 256)
    with path.open("wb") as f:
        for offset in range(0, size, MiB):
            f.write(block[: min(MiB, size - offset)])


@contextmanager
def rclone_endpoint(workdir: Path, size: int) -> Iterator[str]:
    with RcloneS3Server(workdir / "rclone", buckets=(BUCKET,), access_key=ACCESS, secret_key=SECRET) as server:
        store = S3Store(BUCKET, config={"endpoint": server.endpoint, "access_key_id": ACCESS, "secret_access_key": SECRET,
                                        "region": "us-east-1"}, client_options={"allow_http": True})
        source = workdir / "source"
        _write_object(source, size)
        obstore.put(store, KEY, source, chunk_size=16 * MiB, max_concurrency=2)  # rclone hashes it as it lands
        source.unlink()
        yield server.endpoint


@contextmanager
def nginx_endpoint(workdir: Path, size: int) -> Iterator[str]:
    root = workdir / "nginx-root"
    _write_object(root / BUCKET / KEY, size)
    with NginxServer(workdir / "nginx", f"        root {root};\n        location / {{ }}\n") as server:
        yield server.url


def backend_ranged(endpoint: str, size: int, range_size: int, parallel: int, presigned: bool = True) -> int:
    backend = S3Backend.from_url(f"s3://{BUCKET}", {"endpoint": endpoint, "allow_http": True, "access_key": ACCESS,
                                                     "secret_key": SECRET, "presigned_ranges": presigned})
    location = backend.location_for(KEY)

    async def run() -> int:
        slots, total = asyncio.Semaphore(parallel), 0

        async def one(start: int) -> None:
            nonlocal total
            async with slots:
                async for piece in backend.read(location, ByteRange(start, min(start + range_size, size))):
                    total += len(piece)

        await asyncio.gather(*(one(start) for start in range(0, size, range_size)))
        await backend.aclose()
        return total

    return asyncio.run(run())


def obstore_sequential(endpoint: str, size: int, range_size: int, parallel: int) -> int:
    store = S3Store(BUCKET, config={"endpoint": endpoint, "access_key_id": ACCESS, "secret_access_key": SECRET,
                                    "region": "us-east-1"}, client_options={"allow_http": True})

    async def run() -> int:
        total = 0
        result = await obstore.get_async(store, KEY)
        async for piece in result.stream(min_chunk_size=MiB):
            total += len(piece)
        return total

    return asyncio.run(run())


def _boto3_client(endpoint: str) -> Any:
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
                        region_name="us-east-1", config=Config(signature_version="s3v4", max_pool_connections=32))


def boto3_ranged(endpoint: str, size: int, range_size: int, parallel: int) -> int:
    client, lock, total = _boto3_client(endpoint), threading.Lock(), 0

    def one(start: int) -> None:
        nonlocal total
        end = min(start + range_size, size) - 1
        body = client.get_object(Bucket=BUCKET, Key=KEY, Range=f"bytes={start}-{end}")["Body"]
        got = sum(len(piece) for piece in body.iter_chunks(MiB))
        with lock:
            total += got

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, range(0, size, range_size)))
    return total


def boto3_sequential(endpoint: str, size: int, range_size: int, parallel: int) -> int:
    body = _boto3_client(endpoint).get_object(Bucket=BUCKET, Key=KEY)["Body"]
    return sum(len(piece) for piece in body.iter_chunks(MiB))


CLIENTS: dict[str, Callable[[str, int, int, int], int]] = {
    "backend": backend_ranged,
    "backend-obstore": lambda endpoint, size, range_size, parallel: backend_ranged(
        endpoint, size, range_size, parallel, presigned=False),
    "obstore-seq": obstore_sequential,
    "boto3": boto3_ranged,
    "boto3-seq": boto3_sequential,
}
SERVERS = {"rclone": rclone_endpoint, "nginx": nginx_endpoint}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.s3_cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--range-mib", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--servers", default="rclone,nginx")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--repeat", type=int, default=2, help="runs per client; the lowest CPU is reported")
    args = parser.parse_args(argv)
    size, range_size = args.size_mib * MiB, args.range_mib * MiB
    print(f"{args.size_mib} MiB object, ranges of {args.range_mib} MiB x{args.parallel} in flight; CPU s per GB (1e9 bytes)")
    with tempfile.TemporaryDirectory(prefix="s3cpu-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        for server in args.servers.split(","):
            with SERVERS[server](Path(tmp) / server, size) as endpoint:
                for name in args.clients.split(","):
                    best: tuple[float, float] | None = None
                    for _ in range(args.repeat):
                        cpu0, wall0 = cpu_seconds(), time.perf_counter()
                        got = CLIENTS[name](endpoint, size, range_size, args.parallel)
                        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
                        if got != size:
                            print(f"{server:7} {name:15} read {got} of {size} bytes", file=sys.stderr)
                            return 1
                        best = (cpu, wall) if best is None or cpu < best[0] else best
                    assert best is not None
                    print(f"{server:7} {name:15} {best[0] / (size / 1e9):6.3f} CPU s/GB   wall {best[1]:6.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
