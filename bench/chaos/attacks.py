"""Hostile clients: slowloris, a thousand idle connections, oversized headers.

While each attack runs, a well-behaved client keeps showing one image over its own
keep-alive connection; what must hold is that its p99 latency stays under 50 ms, it never
gets an error, and the server's memory stays bounded. Figures per phase go to the report.
"""

from __future__ import annotations

import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ..runner import percentile
from ..systems.imgproxy import ImgproxySystem
from ..systems.procs import rss_bytes, tree_pids

__all__ = ["AttackReport", "run_attacks", "P99_LIMIT_MS"]

P99_LIMIT_MS = 50.0


@dataclass
class AttackReport:
    phases: list[dict[str, object]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    return s


@contextmanager
def _idle(port: int, count: int) -> Iterator[int]:
    """``count`` connections that never send a byte."""
    socks = []
    try:
        for _ in range(count):
            try:
                socks.append(_connect(port))
            except OSError:
                break
        yield len(socks)
    finally:
        for s in socks:
            s.close()


@contextmanager
def _slowloris(port: int, count: int) -> Iterator[int]:
    """``count`` connections that send a request's headers one short line a second, forever."""
    stop = threading.Event()
    socks: list[socket.socket] = []
    for _ in range(count):
        try:
            s = _connect(port)
            s.sendall(b"GET /versions HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        except OSError:
            break

    def drip() -> None:
        n = 0
        while not stop.wait(1.0):
            n += 1
            for s in list(socks):
                try:
                    s.sendall(b"X-a%d: b\r\n" % n)
                except OSError:
                    socks.remove(s)

    t = threading.Thread(target=drip, daemon=True)
    t.start()
    try:
        yield len(socks)
    finally:
        stop.set()
        t.join(5)
        for s in socks:
            s.close()


@contextmanager
def _oversized(port: int, threads: int = 4) -> Iterator[int]:
    """Clients sending 64 KiB header lines as fast as the server answers them."""
    stop = threading.Event()
    sent = [0]

    def hammer() -> None:
        line = b"X-Big: " + b"a" * (64 * 1024) + b"\r\n"
        while not stop.is_set():
            try:
                with _connect(port) as s:
                    s.sendall(b"GET /v2/images HTTP/1.1\r\nHost: x\r\n" + line + b"\r\n")
                    s.recv(4096)
                    sent[0] += 1
            except OSError:
                time.sleep(0.01)

    workers = [threading.Thread(target=hammer, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    try:
        yield threads
    finally:
        stop.set()
        for w in workers:
            w.join(5)


def _measure(http: httpx.Client, image_id: str, seconds: float) -> tuple[list[float], list[int]]:
    latencies, errors = [], []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        began = time.perf_counter()
        try:
            status = http.get(f"/v2/images/{image_id}").status_code
        except httpx.HTTPError:
            status = 0
        latencies.append((time.perf_counter() - began) * 1000)
        if status != 200:
            errors.append(status)
        time.sleep(0.005)
    return latencies, errors


def run_attacks(work: Path, *, seconds: float = 5.0, idle: int = 1000, slow: int = 256,
                log: Callable[[str], None] = print) -> AttackReport:
    _raise_fd_limit(4 * idle + 256)  # the server inherits it
    report = AttackReport()
    system = ImgproxySystem(work / "imgproxy", workers=1, config={"prune_interval": 0, "clean_interval": 0})
    try:
        system.start()
        assert system.proc is not None
        http = httpx.Client(base_url=system.url, timeout=30)
        image_id = http.post("/v2/images", json={"name": "target"}).json()["id"]
        phases: list[tuple[str, Callable[[], object]]] = [
            ("baseline", lambda: _idle(system.port, 0)),
            (f"{idle} idle connections", lambda: _idle(system.port, idle)),
            (f"slowloris x{slow}", lambda: _slowloris(system.port, slow)),
            ("64 KiB header lines", lambda: _oversized(system.port)),
        ]
        for name, attack in phases:
            with attack() as held:  # type: ignore[attr-defined]
                time.sleep(0.5)
                latencies, errors = _measure(http, image_id, seconds)
                rss = rss_bytes(tree_pids(system.proc.pid))
            p99 = percentile(latencies, 99) or 0.0
            row = {"phase": name, "attackers": held, "requests": len(latencies), "p50_ms": round(percentile(latencies, 50) or 0, 2),
                   "p99_ms": round(p99, 2), "errors": len(errors), "rss_mib": round(rss / 2**20, 1)}
            report.phases.append(row)
            log(f"attack {row}")
            if p99 > P99_LIMIT_MS:
                report.violations.append(f"{name}: show p99 {p99:.1f} ms > {P99_LIMIT_MS} ms")
            if errors:
                report.violations.append(f"{name}: the well-behaved client got {sorted(set(errors))}")
        if http.get("/versions").status_code not in (200, 300):
            report.violations.append("the service stopped answering after the attacks")
        http.close()
    finally:
        system.stop()
    return report
