"""Zero-copy reads over HTTP: verified chunks go out with sendfile, local store files are read in place.

Real servers on loopback: ``imgproxy serve`` (whose protocol offers the ASGI
``http.response.zerocopysend`` extension), and the same app under uvicorn's own h11
protocol, which does not (the fallback path: ``pread`` pieces).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.cache_http import CHUNK, CacheClient, cache_server_config, chunk_files, payload, wait_for
from tests.server import ServerProcess, free_port
from imgproxy.zerocopy import FEW, UNSENT_MAX

SIZE = 5 * CHUNK + 1234  # six chunks, the last one short

# Ranges that start, end or straddle chunk boundaries (and the whole image).
RANGES = [(0, 0), (CHUNK - 1, CHUNK), (CHUNK - 10, 3 * CHUNK + 9), (2 * CHUNK, 4 * CHUNK - 1),
          (5 * CHUNK, SIZE - 1), (17, SIZE - 1)]


def in_place_config(**overrides: object) -> dict[str, object]:
    """The cache tests' settings, with the file store read in place (the default)."""
    config = cache_server_config(**overrides)
    del config["file"]
    return config


def flip_byte(path: Path, offset: int) -> None:
    """Corrupt one byte in place, as a disk error or a stray write would."""
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def store_file(server: ServerProcess, image_id: str) -> Path:
    return server.data_dir / "images" / image_id


def get_cut(server: ServerProcess, image_id: str, headers: dict[str, str] | None = None) -> tuple[int, int, int]:
    """(status, declared length, bytes received) of a download read to its end or its cut."""
    with httpx.Client(base_url=server.url, headers={"X-Auth-Token": server.admin_token}, timeout=30) as http:
        with http.stream("GET", f"/v2/images/{image_id}/file", headers=headers or {}) as r:
            got = 0
            try:
                for part in r.iter_raw():
                    got += len(part)
            except httpx.RemoteProtocolError:
                pass  # the connection was cut before Content-Length bytes
            return r.status_code, int(r.headers.get("content-length", -1)), got


@pytest.fixture
def in_place(server_factory: Callable[..., ServerProcess]) -> Iterator[tuple[ServerProcess, CacheClient]]:
    server = server_factory(config=in_place_config())
    api = CacheClient(server)
    yield server, api
    api.close()


def test_an_upload_to_a_local_store_is_written_once_and_served_from_the_store_file(
        in_place: tuple[ServerProcess, CacheClient]) -> None:
    server, api = in_place
    data = payload(SIZE, seed=21)
    image_id = api.new_image(data)
    assert store_file(server, image_id).read_bytes() == data
    assert chunk_files(server.data_dir) == []  # no second copy in the cache
    assert api.download(image_id) == data
    assert api.download(image_id) == data  # again, remembered as verified
    assert chunk_files(server.data_dir) == []
    assert api.stats()["bytes_cached"] == 0


@pytest.mark.parametrize("in_place_store", [True, False], ids=["store-file", "cached-chunks"])
def test_ranges_across_chunk_boundaries_are_exact(server_factory: Callable[..., ServerProcess],
                                                  in_place_store: bool) -> None:
    config = in_place_config() if in_place_store else cache_server_config()
    server = server_factory(config=config)
    api = CacheClient(server)
    data = payload(SIZE, seed=22)
    image_id = api.new_image(data)
    assert (chunk_files(server.data_dir) == []) == in_place_store
    for first, last in RANGES:
        r = api.http.get(f"/v2/images/{image_id}/file", headers={"Range": f"bytes={first}-{last}"})
        assert r.status_code == 206, r.text
        assert r.headers["content-range"] == f"bytes {first}-{last}/{SIZE}"
        assert r.content == data[first:last + 1]
    api.close()


def test_a_corrupt_byte_in_the_store_file_is_never_sent(in_place: tuple[ServerProcess, CacheClient]) -> None:
    server, api = in_place
    data = payload(SIZE, seed=23)
    image_id = api.new_image(data)
    assert api.download(image_id) == data  # verified once: remembered, but not past a change
    flip_byte(store_file(server, image_id), 2 * CHUNK + 77)

    # The whole image: the chunks before the bad one arrive, then the connection is cut.
    status, declared, got = get_cut(server, image_id)
    assert (status, declared) == (200, SIZE)
    assert got <= 2 * CHUNK
    # A range that starts in the bad chunk: an error before any byte.
    r = api.http.get(f"/v2/images/{image_id}/file", headers={"Range": f"bytes={2 * CHUNK}-"})
    assert r.status_code == 502
    # The good chunks are still served.
    r = api.http.get(f"/v2/images/{image_id}/file", headers={"Range": f"bytes=0-{2 * CHUNK - 1}"})
    assert r.status_code == 206 and r.content == data[:2 * CHUNK]
    assert api.stats()["corrupt_store_ranges"] >= 2
    assert "do not match the manifest" in server.log()


def test_a_corrupt_cached_chunk_is_never_sent_even_after_it_was_verified(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(config=cache_server_config())
    api = CacheClient(server)
    data = payload(SIZE, seed=24)
    image_id = api.new_image(data)
    assert api.download(image_id) == data  # every chunk verified and remembered
    victim = sorted(chunk_files(server.data_dir), key=lambda p: p.stat().st_size)[-1]
    flip_byte(victim, 100)
    corrupt = api.stats()["corrupt_chunks"]
    assert api.download(image_id) == data  # hashed again, dropped, refilled from the store
    assert wait_for(lambda: api.stats()["corrupt_chunks"] == corrupt + 1)
    api.close()


@pytest.mark.parametrize("threads", [4, 0], ids=["sendfile-threads", "event-loop"])
def test_many_concurrent_streams_all_get_the_right_bytes(server_factory: Callable[..., ServerProcess],
                                                         threads: int) -> None:
    # 40 streams: far more than FEW, so (with threads) every sendfile runs on a thread.
    server = server_factory(config=in_place_config(sendfile_threads=threads))
    api = CacheClient(server)
    data = payload(16 * CHUNK + 5, seed=25)
    image_id = api.new_image(data)
    want = hashlib.sha256(data).hexdigest()

    def fetch(i: int) -> str:
        headers = {"X-Auth-Token": server.admin_token}
        if i % 4 == 3:
            headers["Range"] = f"bytes={i * 1000}-"
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
            r = http.get(f"/v2/images/{image_id}/file")
            expected = data[i * 1000:] if i % 4 == 3 else data
            return "ok" if r.content == expected else f"wrong bytes in stream {i}"

    with ThreadPoolExecutor(40) as pool:
        results = list(pool.map(fetch, range(40)))
    assert results == ["ok"] * 40
    assert hashlib.sha256(api.download(image_id)).hexdigest() == want
    api.close()


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _big_image(api: CacheClient, seed: int) -> tuple[str, bytes]:
    """An image of more bytes than the socket buffers hold, read once (so cached); its id and bytes."""
    data = payload(200 * CHUNK, seed=seed)
    image_id = api.new_image(data)
    assert api.download(image_id) == data
    return image_id, data


def _raw_get(server: ServerProcess, image_id: str, rcvbuf: int = 0) -> tuple[socket.socket, bytes]:
    """A raw connection that asked for the image's data, and its first received bytes."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET /v2/images/{image_id}/file HTTP/1.1\r\nHost: x\r\n"
                 f"X-Auth-Token: {server.admin_token}\r\n\r\n".encode())
    return sock, sock.recv(4096)


@pytest.mark.parametrize("busy", [False, True], ids=["lone", "many-in-flight"])
def test_a_client_that_goes_away_mid_sendfile_leaves_nothing_open(
        in_place: tuple[ServerProcess, CacheClient], busy: bool) -> None:
    server, api = in_place
    image_id, data = _big_image(api, seed=26)
    assert server.proc is not None
    pid = server.proc.pid  # one worker: uvicorn serves in this process
    idle = wait_for(lambda: _open_fds(pid), timeout=5)
    # With more than FEW requests in flight, sends run on the sendfile threads.
    stalled = [_raw_get(server, image_id)[0] for _ in range(FEW if busy else 0)]
    try:
        for _ in range(3):
            sock, head = _raw_get(server, image_id, rcvbuf=4096)
            assert head.startswith(b"HTTP/1.1 200")
            # Leave with a reset while the server is blocked on a full socket.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
    finally:
        for other in stalled:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            other.close()
    # Every descriptor the abandoned sends held (chunk files, watched sockets) is closed.
    assert wait_for(lambda: _open_fds(pid) <= idle, timeout=10)
    assert api.download(image_id) == data


def _server_socket(server: ServerProcess, client: socket.socket) -> dict[str, int]:
    """``bytes_sent`` and ``notsent`` (bytes queued, not sent yet) of the server's end of
    ``client``'s connection, as ``ss`` (iproute2) reports them."""
    port = client.getsockname()[1]
    out = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{server.port} and dport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return {key: int(m.group(1)) if (m := re.search(rf"\b{key}:(\d+)", out)) else 0
            for key in ("bytes_sent", "notsent")}


def test_a_client_that_stops_reading_pins_little_unsent_data_in_the_server(
        in_place: tuple[ServerProcess, CacheClient]) -> None:
    server, api = in_place
    image_id, data = _big_image(api, seed=28)
    sock, got = _raw_get(server, image_id)
    with sock:
        assert got.startswith(b"HTTP/1.1 200")
        # The client reads nothing more: the server sends until the window closes, then waits.
        seen: list[dict[str, int]] = []

        def stalled() -> bool:
            seen.append(_server_socket(server, sock))
            return len(seen) > 3 and seen[-1]["bytes_sent"] == seen[-4]["bytes_sent"] > 0

        assert wait_for(stalled, timeout=15, interval=0.1)
        # Not the send buffer's 4 MiB (before: 4.0 MB here): what lies behind the closed window is ours to send.
        assert seen[-1]["notsent"] <= 2 * UNSENT_MAX
        # The stream goes on whole once the client reads again.
        while b"\r\n\r\n" not in got:
            got += sock.recv(65536)
        body = bytearray(got.split(b"\r\n\r\n", 1)[1])
        while len(body) < len(data):
            part = sock.recv(1 << 20)
            assert part, f"the connection ended after {len(body)} of {len(data)} bytes"
            body += part
        assert body == data


def _read_response(sock: socket.socket) -> bytes:
    """The body of the next response on ``sock`` (one with a Content-Length)."""
    got = b""
    while b"\r\n\r\n" not in got:
        part = sock.recv(65536)
        assert part, "the connection ended before the response head"
        got += part
    head, body = got.split(b"\r\n\r\n", 1)
    match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    assert head.startswith(b"HTTP/1.1 200") and match, head
    while len(body) < int(match.group(1)):
        part = sock.recv(1 << 20)
        assert part, f"the connection ended after {len(body)} of {match.group(1)} body bytes"
        body += part
    return body


def test_a_response_sent_from_files_holds_back_no_bytes_at_its_end(
        in_place: tuple[ServerProcess, CacheClient]) -> None:
    # With more than FEW requests in flight, sending from files corks the socket (full
    # segments only); the response's end must uncork it, or its last short segment waits
    # for the kernel's 200 ms cork timer.
    server, api = in_place
    data = payload(SIZE, seed=31)
    image_id = api.new_image(data)
    assert api.download(image_id) == data
    big_id, _ = _big_image(api, seed=32)
    stalled = [_raw_get(server, big_id)[0] for _ in range(FEW)]  # in flight, reading nothing
    request = (f"GET /v2/images/{image_id}/file HTTP/1.1\r\nHost: x\r\n"
               f"X-Auth-Token: {server.admin_token}\r\n\r\n").encode()
    took = []
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            for _ in range(3):  # one kept-alive connection: each response ends whole
                start = time.perf_counter()
                sock.sendall(request)
                assert _read_response(sock) == data
                took.append(time.perf_counter() - start)
    finally:
        for other in stalled:
            other.close()
    # A few ms on loopback; >= 0.2 s every time if the last segment were held back.
    assert min(took) < 0.1, took


class PlainUvicorn:
    """The app under uvicorn's own h11 protocol: no zerocopysend extension. Stopped by PID."""

    def __init__(self, data_dir: Path, config: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMGPROXY_")}
        env.update({"IMGPROXY_DATA_DIR": str(data_dir), "IMGPROXY_AUTH": "noauth", "IMGPROXY_CONFIG": str(config)})
        self.log = data_dir.parent / "plain-uvicorn.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", "imgproxy.main:app_from_environment", "--http", "h11",
                 "--port", str(self.port), "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait(self) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                return httpx.get(self.url + "/versions").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def test_without_the_extension_the_same_bytes_are_sent_with_preads(tmp_path: Path) -> None:
    from bench.systems.imgproxy import toml_text

    config = tmp_path / "imgproxy.toml"
    config.write_text(toml_text(in_place_config()))
    server = PlainUvicorn(tmp_path / "data", config)
    try:
        server.wait()
        with httpx.Client(base_url=server.url, headers={"X-Project-Id": "p"}, timeout=30) as http:
            r = http.post("/v2/images", json={"name": "plain", "disk_format": "raw", "container_format": "bare"})
            image_id = r.json()["id"]
            data = payload(SIZE, seed=27)
            r = http.put(f"/v2/images/{image_id}/file", content=data,
                         headers={"Content-Type": "application/octet-stream"})
            assert r.status_code == 204, r.text
            assert http.get(f"/v2/images/{image_id}/file").content == data
            for first, last in RANGES:
                r = http.get(f"/v2/images/{image_id}/file", headers={"Range": f"bytes={first}-{last}"})
                assert r.status_code == 206 and r.content == data[first:last + 1]
            flip_byte(tmp_path / "data" / "images" / image_id, 3 * CHUNK)
            with http.stream("GET", f"/v2/images/{image_id}/file") as r:
                got = 0
                with pytest.raises(httpx.RemoteProtocolError):
                    for part in r.iter_raw():
                        got += len(part)
            assert got <= 3 * CHUNK
    finally:
        server.stop()
