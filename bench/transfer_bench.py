"""Upload and download throughput of one imgproxy server, measured with curl.

Starts ``python -m imgproxy serve --noauth`` on a fresh data dir, uploads one image
with ``curl -T`` and downloads it with curl to /dev/null (1 stream, then N in
parallel), printing MB/s and the server's CPU seconds per GB. For context it also
measures this machine's limits for the upload path: md5+sha512 sequential vs. in
parallel (:class:`cache.digests.ImageDigests`) and write+fsync to the data disk.

    python -m bench.transfer_bench --size-mib 1024 --streams 8

The server and every curl it starts are stopped by PID.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from cache.digests import ImageDigests

MiB = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(v) for v in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def _json_request(url: str, method: str, body: dict[str, object] | None = None) -> dict[str, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")  # type: ignore[no-any-return]


class Server:
    """One ``imgproxy serve --noauth`` process; stopped by PID."""

    def __init__(self, data_dir: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (data_dir.parent / "server.log").open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMGPROXY_")}
        args = [sys.executable, "-m", "imgproxy", "serve", "--noauth", "--data-dir", str(data_dir)]
        self.proc = subprocess.Popen(args + ["--port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("imgproxy exited during start-up; see server.log")
            try:
                urllib.request.urlopen(self.url + "/versions", timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("imgproxy did not start within 30 s")

    def cpu(self) -> float:
        return _cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def _make_source(path: Path, size: int) -> str:
    """Write ``size`` random bytes; return their sha512."""
    digest = hashlib.sha512()
    block = os.urandom(16 * MiB)  # one random block, varied per position: cheap yet not constant
    with path.open("wb") as f:
        written = 0
        while written < size:
            piece = (written.to_bytes(8, "little") + block)[: min(len(block), size - written)]
            f.write(piece)
            digest.update(piece)
            written += len(piece)
    return digest.hexdigest()


def _curl(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["curl", "-sS", "--fail", "-o", "/dev/null", *args], stdout=subprocess.PIPE)


def _wait_all(procs: list[subprocess.Popen[bytes]]) -> list[str]:
    outputs = []
    for p in procs:
        out, _ = p.communicate(timeout=900)
        if p.returncode != 0:
            raise RuntimeError(f"curl failed with {p.returncode}")
        outputs.append(out.decode())
    return outputs


def measure_hashing(size: int) -> tuple[float, float]:
    """(sequential md5+sha512, ImageDigests) in GB/s over ``size`` bytes of 1 MiB pieces."""
    piece = os.urandom(MiB)
    n = size // MiB
    t = time.perf_counter()
    md5, sha = hashlib.md5(), hashlib.sha512()
    for _ in range(n):
        md5.update(piece)
        sha.update(piece)
    sequential = n * MiB / (time.perf_counter() - t) / 1e9
    with ImageDigests() as digests:
        t = time.perf_counter()
        for _ in range(n):
            digests.update(piece)
        parallel = n * MiB / (time.perf_counter() - t) / 1e9
    return sequential, parallel


def measure_disk(directory: Path, size: int) -> float:
    """write + fsync of ``size`` bytes in 1 MiB pieces, GB/s."""
    piece = os.urandom(MiB)
    path = directory / "disk-probe"
    t = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(size // MiB):
            os.write(fd, piece)
        os.fsync(fd)
    finally:
        os.close(fd)
    rate = size / (time.perf_counter() - t) / 1e9
    path.unlink()
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--workdir", default=None, help="where the data dir goes (default: a temp dir)")
    args = parser.parse_args(argv)
    if shutil.which("curl") is None:
        print("curl is needed", file=sys.stderr)
        return 2
    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="transfer-bench-", dir=args.workdir))
    server: Server | None = None
    try:
        seq, par = measure_hashing(min(size, 512 * MiB))
        disk = measure_disk(work, min(size, 512 * MiB))
        print(f"limits: md5+sha512 sequential {seq:.2f} GB/s, ImageDigests (2 threads) {par:.2f} GB/s, "
              f"write+fsync {disk:.2f} GB/s")

        source = work / "image.raw"
        sha512 = _make_source(source, size)
        server = Server(work / "data")
        image = _json_request(server.url + "/v2/images", "POST",
                              {"name": "bench", "disk_format": "raw", "container_format": "bare"})
        file_url = f"{server.url}/v2/images/{image['id']}/file"

        cpu0, t0 = server.cpu(), time.perf_counter()
        out = _wait_all([_curl(["-T", str(source), "-X", "PUT", "-H", "Content-Type: application/octet-stream",
                                "-w", "%{http_code}", file_url])])
        up_s, up_cpu = time.perf_counter() - t0, server.cpu() - cpu0
        assert out == ["204"], out
        shown = _json_request(f"{server.url}/v2/images/{image['id']}", "GET")
        assert shown["status"] == "active" and shown["os_hash_value"] == sha512, "upload digest mismatch"
        print(f"upload   {size / MiB:.0f} MiB: {size / up_s / 1e6:7.0f} MB/s  "
              f"(server CPU {up_cpu / (size / 1e9):.2f} s/GB)")

        for streams in (1, args.streams):
            cpu0, t0 = server.cpu(), time.perf_counter()
            _wait_all([_curl([file_url]) for _ in range(streams)])
            dt, cpu = time.perf_counter() - t0, server.cpu() - cpu0
            total = size * streams
            print(f"download x{streams:<2} {total / dt / 1e6:7.0f} MB/s aggregate  "
                  f"(server CPU {cpu / (total / 1e9):.2f} s/GB)")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
