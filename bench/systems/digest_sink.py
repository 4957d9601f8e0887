"""The floor under every upload on this machine: a server that receives a body and digests it.

An Image API upload must compute md5 (``checksum``) and sha512 (``os_hash_value``) over
every byte; neither digest can be split across cores. This sink does that and nothing else:
plain blocking sockets, the body received into a few reused 4 MiB buffers, md5 and sha512
each on its own thread (hashlib releases the GIL), nothing stored, no framework. What curl
reaches against it is the most any upload can reach here, storage and bookkeeping free;
the upload scenario runs it in turn with the real systems.

Run as ``python -m bench.systems.digest_sink PORT``. ``PUT`` (any path) with a
Content-Length answers 200 with ``{"size", "checksum", "os_hash_value"}``.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ..servers.process import free_port, stop_process, wait_listening
from .base import System, SystemUnavailable

__all__ = ["DigestSink"]

PIECE = 4 << 20
BUFFERS = 6  # pieces in flight: at most BUFFERS - 2 queued on the lanes while one is received
HEAD_LIMIT = 64 * 1024


class DigestSink(System):
    """The sink as a benchmarked system (its ``pid`` is metered like any server's)."""

    kind = "floor"

    def __init__(self, work: Path, name: str = "floor") -> None:
        super().__init__(name)
        self.work = work
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "DigestSink":
        self.work.mkdir(parents=True, exist_ok=True)
        port = free_port()
        log = self.work / "sink.log"
        with log.open("wb") as out:
            self._proc = subprocess.Popen([sys.executable, "-m", "bench.systems.digest_sink", str(port)],
                                          stdout=out, stderr=subprocess.STDOUT,
                                          cwd=Path(__file__).resolve().parents[2])
        try:
            wait_listening(self._proc, port, 30, "digest sink", lambda: log.read_text(errors="replace")[-500:])
        except RuntimeError as exc:
            self.stop()
            raise SystemUnavailable(str(exc)) from exc
        self.pid, self.url = self._proc.pid, f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, 5)
            self._proc = None
        self.pid = None


def _read_head(conn: socket.socket) -> tuple[bytes, bytes]:
    head = b""
    while b"\r\n\r\n" not in head:
        got = conn.recv(65536)
        if not got or len(head) > HEAD_LIMIT:
            raise ConnectionError("no complete request head")
        head += got
    raw, rest = head.split(b"\r\n\r\n", 1)
    return raw, rest


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise ValueError("no Content-Length")


def _answer(conn: socket.socket, status: str, body: dict[str, object]) -> None:
    data = json.dumps(body).encode()
    conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                 f"Connection: close\r\n\r\n".encode() + data)


def _digest_body(conn: socket.socket, size: int, rest: bytes, lanes: tuple[ThreadPoolExecutor, ...]) -> dict[str, object]:
    md5, sha512 = hashlib.md5(usedforsecurity=False), hashlib.sha512()
    md5.update(rest)
    sha512.update(rest)
    buffers = [bytearray(PIECE) for _ in range(BUFFERS)]
    queued: list[tuple[Future[None], Future[None]]] = []
    got, turn = len(rest), 0
    while got < size:
        if len(queued) >= BUFFERS - 2:  # the oldest buffer is about to be reused: its hashing must be done
            for done in queued.pop(0):
                done.result()
        view = memoryview(buffers[turn % BUFFERS])
        turn += 1
        filled = 0
        while filled < PIECE and got + filled < size:
            n = conn.recv_into(view[filled:], min(PIECE - filled, size - got - filled))
            if n == 0:
                raise ConnectionError(f"body ended at {got + filled} of {size}")
            filled += n
        got += filled
        piece = view[:filled]
        queued.append((lanes[0].submit(md5.update, piece), lanes[1].submit(sha512.update, piece)))
    for pair in queued:
        for done in pair:
            done.result()
    return {"size": got, "checksum": md5.hexdigest(), "os_hash_value": sha512.hexdigest()}


def serve(port: int) -> None:
    lanes = (ThreadPoolExecutor(1), ThreadPoolExecutor(1))
    listener = socket.create_server(("127.0.0.1", port))
    while True:
        conn, _ = listener.accept()
        with conn:
            try:
                head, rest = _read_head(conn)
                if not head.startswith(b"PUT "):
                    _answer(conn, "405 Method Not Allowed", {"error": "PUT only"})
                    continue
                _answer(conn, "200 OK", _digest_body(conn, _content_length(head), rest, lanes))
            except (OSError, ValueError) as exc:
                print(f"digest sink: {exc}", flush=True)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
