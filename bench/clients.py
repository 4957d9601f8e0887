"""Simulated compute nodes and API callers, run in their own process.

A node makes one ``GET`` (optionally with ``Range``), hashes with sha512 every byte it
receives, and records time to first body byte, total time and bytes. The harness runs
all nodes of a step as threads of one child process (``python -m bench.clients``, a
JSON job on stdin, JSON results on stdout), so the client's own CPU seconds can be
reported and the harness's own work does not slow the clients. hashlib releases the
GIL on large buffers, so threads hash in parallel.

Wire format of a job::

    {"mode": "download", "timeout": 300, "fetches": [{"url", "sha512", "size", "range": [a, b] | null}]}
    {"mode": "requests", "timeout": 30, "concurrency": 16, "base": URL, "headers": {...},
     "requests": [[method, path, json_body_or_null], ...]}
"""

from __future__ import annotations

import hashlib
import http.client
import json
import resource
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Fetch", "NodeResult", "run_downloads", "run_requests", "ClientRun"]

_PIECE = 1 << 20


@dataclass(frozen=True)
class Fetch:
    """One node's download: ``range`` is inclusive ``(first, last)`` byte offsets, or None."""

    url: str
    sha512: str
    size: int
    range: tuple[int, int] | None = None


@dataclass
class NodeResult:
    url: str
    status: int = 0
    bytes: int = 0
    ttfb: float | None = None
    total: float | None = None
    ok: bool = False
    error: str = ""


@dataclass
class ClientRun:
    """What one client process measured: per-node results or latencies, plus its own CPU."""

    results: list[dict[str, Any]] = field(default_factory=list)
    wall: float = 0.0
    cpu_s: float = 0.0
    errors: list[str] = field(default_factory=list)


def _connect(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return conn, path


def _download(fetch: Fetch, start: float, timeout: float, headers: dict[str, str]) -> NodeResult:
    res = NodeResult(url=fetch.url)
    conn, path = _connect(fetch.url, timeout)
    want = fetch.size if fetch.range is None else fetch.range[1] - fetch.range[0] + 1
    hdrs = dict(headers)
    if fetch.range is not None:
        hdrs["Range"] = f"bytes={fetch.range[0]}-{fetch.range[1]}"
    try:
        conn.request("GET", path, headers=hdrs)
        resp = conn.getresponse()
        res.status = resp.status
        digest = hashlib.sha512()
        expected_status = 200 if fetch.range is None else 206
        if resp.status != expected_status:
            body = resp.read(2000)
            res.error = f"HTTP {resp.status}: {body[:200]!r}"
            return res
        while True:
            # read1: whatever has arrived (up to 1 MiB), so the first byte is timed when it lands.
            data = resp.read1(_PIECE)
            if not data:
                break
            if res.ttfb is None:
                res.ttfb = time.perf_counter() - start
            digest.update(data)
            res.bytes += len(data)
        res.total = time.perf_counter() - start
        if res.bytes != want:
            res.error = f"received {res.bytes} bytes, expected {want}"
        elif digest.hexdigest() != fetch.sha512:
            res.error = "sha512 mismatch: the bytes received differ from the image"
        else:
            res.ok = True
    except (OSError, http.client.HTTPException) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
        res.total = time.perf_counter() - start
    finally:
        conn.close()
    return res


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _downloads_inprocess(job: dict[str, Any]) -> ClientRun:
    fetches = [Fetch(f["url"], f["sha512"], f["size"], tuple(f["range"]) if f.get("range") else None) for f in job["fetches"]]
    timeout = float(job.get("timeout", 300))
    headers = dict(job.get("headers", {}))
    results: list[NodeResult | None] = [None] * len(fetches)
    barrier = threading.Barrier(len(fetches) + 1)
    start_box: list[float] = []

    def node(i: int) -> None:
        barrier.wait()
        results[i] = _download(fetches[i], start_box[0], timeout, headers)

    threads = [threading.Thread(target=node, args=(i,), daemon=True) for i in range(len(fetches))]
    for t in threads:
        t.start()
    cpu0 = _cpu()
    start_box.append(time.perf_counter())
    barrier.wait()
    for t in threads:
        t.join(timeout + 30)
    run = ClientRun(wall=time.perf_counter() - start_box[0], cpu_s=_cpu() - cpu0)
    run.results = [asdict(r) if r else asdict(NodeResult(url="?", error="node did not finish")) for r in results]
    return run


def _requests_inprocess(job: dict[str, Any]) -> ClientRun:
    base = job["base"]
    timeout = float(job.get("timeout", 30))
    headers = dict(job.get("headers", {}))
    todo = [tuple(r) for r in job["requests"]]
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    bodies: list[str] = []
    index = [0]
    # Stop issuing requests after ``max_seconds`` (rates stay honest: they count what completed).
    max_seconds = job.get("max_seconds")
    stop_at = time.perf_counter() + float(max_seconds) if max_seconds else float("inf")

    def worker() -> None:
        conn, _ = _connect(base, timeout)
        while True:
            with lock:
                if index[0] >= len(todo) or time.perf_counter() > stop_at:
                    break
                method, path, body = (todo[index[0]] + (None,))[:3]
                index[0] += 1
            t0 = time.perf_counter()
            for attempt in (0, 1):
                try:
                    if body is None:
                        conn.request(method, path, headers=headers)
                    else:
                        payload = json.dumps(body).encode()
                        conn.request(method, path, body=payload, headers={**headers, "Content-Type": "application/json"})
                    resp = conn.getresponse()
                    data = resp.read()
                    if resp.status < 300 and job.get("keep_bodies"):
                        with lock:
                            bodies.append(data.decode(errors="replace"))
                    if resp.status >= 400:
                        with lock:
                            errors.append(f"{method} {path}: HTTP {resp.status}")
                    if resp.getheader("Connection", "").lower() == "close":
                        conn.close()
                    break
                except (OSError, http.client.HTTPException) as exc:
                    # A kept-alive connection the server closed: reconnect once.
                    conn.close()
                    if attempt:
                        with lock:
                            errors.append(f"{method} {path}: {type(exc).__name__}: {exc}")
            with lock:
                latencies.append(time.perf_counter() - t0)
        conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(int(job.get("concurrency", 1)))]
    cpu0, t0 = _cpu(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run = ClientRun(wall=time.perf_counter() - t0, cpu_s=_cpu() - cpu0, errors=errors[:20])
    run.results = [{"latency": x} for x in latencies] + [{"body": b} for b in bodies]
    return run


def _run_child(job: dict[str, Any], timeout: float) -> ClientRun:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.clients"],
        input=json.dumps(job).encode(), capture_output=True, timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"client process failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-1000:]}")
    return ClientRun(**json.loads(proc.stdout))


def run_downloads(fetches: list[Fetch], *, timeout: float = 300.0, headers: dict[str, str] | None = None) -> ClientRun:
    """Start every fetch at once (one thread each) in a child process; wait for all."""
    job = {
        "mode": "download", "timeout": timeout, "headers": headers or {},
        "fetches": [{"url": f.url, "sha512": f.sha512, "size": f.size, "range": f.range} for f in fetches],
    }
    return _run_child(job, timeout + 60)


def run_requests(base: str, requests: list[tuple[Any, ...]], *, concurrency: int, headers: dict[str, str] | None = None,
                 timeout: float = 30.0, keep_bodies: bool = False, max_seconds: float | None = None) -> ClientRun:
    """Issue ``requests`` ((method, path[, json body])) over ``concurrency`` keep-alive connections.

    With ``max_seconds``, no request starts after that long: slow calls end the step early
    instead of the run. Results hold ``{"latency": s}`` per completed request, then
    ``{"body": text}`` per 2xx answer when ``keep_bodies``.
    """
    job = {"mode": "requests", "base": base, "requests": requests, "concurrency": concurrency,
           "headers": headers or {}, "timeout": timeout, "keep_bodies": keep_bodies, "max_seconds": max_seconds}
    # Each request may take ``timeout``; the whole job gets at most an hour (huge values overflow).
    return _run_child(job, min(timeout * max(1, len(requests)) + 60, 3600))


def main() -> int:
    job = json.load(sys.stdin)
    run = _downloads_inprocess(job) if job["mode"] == "download" else _requests_inprocess(job)
    json.dump(asdict(run), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
