"""http stores that ignore ``Range``: each image is read upstream once, whatever the chunk fills ask.

Two real, widely deployed servers that answer a ranged GET with ``200`` and the whole object:

* Python's ``http.server.SimpleHTTPRequestHandler`` (``python -m http.server``), which
  implements no ``Range`` at all. It runs in a thread of the test; a subclass only counts
  what the stock handler does (requests, ``Range`` headers, body bytes written) and paces
  its body writes a little, so a herd of readers meets the fill while it is still running.
* nginx with ``max_ranges 0;`` (ranges switched off), counted from its access log and
  paced with ``limit_rate``.

What a user sees: the image reads back byte-identical through the Image API (a whole GET
and a ranged GET of a middle range, alone and in a herd), and the store served the image's
bytes exactly once, in one GET.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from backends import ByteRange
from backends.http import HttpBackend, HttpOptions
from bench.servers.nginx import NginxServer
from tests.nginx_fixtures import NginxStore
from tests.requirements import require_nginx
from tests.server import ServerProcess
from tests.test_locations import CHUNK, add_location, digests, new_image

pytestmark = pytest.mark.timeout(120)

SIZE = 8 * CHUNK + 321  # nine chunks of 64 KiB
MIDDLE = (CHUNK + 100, 5 * CHUNK + 7)  # a ranged GET across several chunks, in the middle
CLIENTS = 8


# ---- the two servers ------------------------------------------------------------------


class Store(Protocol):
    """An http store that ignores Range, and what it served."""

    def put(self, name: str, data: bytes) -> str: ...

    def gets(self) -> int:
        """GET requests answered so far (HEADs do not count: they send no body)."""
        ...

    def body_bytes(self) -> int:
        """Body bytes sent so far, once the server has stopped sending."""
        ...


@dataclass
class PythonHttpStore:
    """``http.server.SimpleHTTPRequestHandler`` serving ``root``, with counters."""

    root: Path
    url: str = ""
    sent: int = 0
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (method, Range header)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, name: str, data: bytes) -> str:
        tmp = self.root / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(self.root / name)
        return f"{self.url}/{name}"

    def gets(self) -> int:
        with self.lock:
            return sum(1 for method, _ in self.requests if method == "GET")

    def body_bytes(self) -> int:
        return _settled(lambda: self.sent)


def _settled(count: Callable[[], int]) -> int:
    """``count()`` once it stops changing (a server finishes writing after the client read)."""
    last = -1
    while (now := count()) != last:
        last = now
        time.sleep(0.2)
    return now


@pytest.fixture
def python_http_store(tmp_path: Path) -> Iterator[PythonHttpStore]:
    store = PythonHttpStore(tmp_path / "py-root")
    store.root.mkdir()

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(store.root), **kwargs)

        def send_head(self) -> Any:
            with store.lock:
                store.requests.append((self.command, self.headers.get("Range")))
            return super().send_head()

        def copyfile(self, source: Any, outputfile: Any) -> None:
            # The stock copy, counted and paced (16 KiB per 5 ms: about 0.2 s per image).
            while piece := source.read(16 * 1024):
                outputfile.write(piece)
                with store.lock:
                    store.sent += len(piece)
                time.sleep(0.005)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the counters above are the access log

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    store.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="python-http-store", daemon=True)
    thread.start()
    try:
        yield store
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@dataclass
class NoRangeNginx:
    """nginx with ``max_ranges 0``, counted from its access log."""

    store: NginxStore

    def put(self, name: str, data: bytes) -> str:
        return self.store.put(name, data)

    def gets(self) -> int:
        return sum(1 for line in self.store.log_lines() if line.startswith("GET "))

    def body_bytes(self) -> int:
        return _settled(lambda: self.store.server.bytes_sent())


@pytest.fixture
def norange_nginx(tmp_path: Path) -> Iterator[NoRangeNginx]:
    require_nginx()
    root = tmp_path / "nginx-root"
    root.mkdir()
    body = f"root {root};\n        max_ranges 0;\n        location / {{ limit_rate 512k; }}\n"
    server = NginxServer(tmp_path / "nginx", body).start()
    try:
        yield NoRangeNginx(NginxStore(server, root))
    finally:
        server.stop()


@pytest.fixture(params=["python-http.server", "nginx-max_ranges-0"])
def store(request: pytest.FixtureRequest) -> Store:
    name = "python_http_store" if request.param == "python-http.server" else "norange_nginx"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


# ---- through the Image API ------------------------------------------------------------


def register(server: ServerProcess, store: Store, data: bytes) -> str:
    url = store.put("rangeless.img", data)
    with httpx.Client(base_url=server.url, headers={"X-Auth-Token": server.admin_token}, timeout=30) as admin:
        image_id = new_image(admin, name="rangeless")
        assert add_location(admin, image_id, url, digests(data)).status_code == 202
    return image_id


def fetch(server: ServerProcess, image_id: str, byte_range: tuple[int, int] | None = None) -> tuple[int, bytes]:
    headers = {"X-Auth-Token": server.admin_token}
    if byte_range is not None:
        headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1] - 1}"
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
        r = client.get(f"/v2/images/{image_id}/file")
        return r.status_code, r.content


def test_image_is_read_once_through_the_api(server_factory: Callable[..., ServerProcess], store: Store) -> None:
    data = os.urandom(SIZE)
    server = server_factory(config={"chunk_size": CHUNK})
    image_id = register(server, store, data)

    assert fetch(server, image_id, MIDDLE) == (206, data[MIDDLE[0]:MIDDLE[1]])
    assert fetch(server, image_id) == (200, data)
    assert fetch(server, image_id, MIDDLE) == (206, data[MIDDLE[0]:MIDDLE[1]])

    assert store.gets() == 1
    assert store.body_bytes() == SIZE


def test_herd_reads_it_once(server_factory: Callable[..., ServerProcess], store: Store) -> None:
    data = os.urandom(SIZE)
    server = server_factory(config={"chunk_size": CHUNK})
    image_id = register(server, store, data)
    wanted = [None if i % 2 == 0 else MIDDLE for i in range(CLIENTS)]
    results: list[tuple[int, bytes] | BaseException | None] = [None] * CLIENTS
    go = threading.Event()

    def client(i: int) -> None:
        go.wait()
        try:
            results[i] = fetch(server, image_id, wanted[i])
        except BaseException as exc:  # reported below, with the client's number
            results[i] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(90)

    expected = [(200, data) if w is None else (206, data[w[0]:w[1]]) for w in wanted]
    seen = [r if r is None or isinstance(r, BaseException) else (r[0], hashlib.sha256(r[1]).hexdigest())
            for r in results]
    assert seen == [(s, hashlib.sha256(b).hexdigest()) for s, b in expected]
    assert store.gets() == 1
    assert store.body_bytes() == SIZE


# ---- the store itself: the verdict is remembered per location -----------------------------


async def test_verdict_is_remembered_then_forgotten(python_http_store: PythonHttpStore, tmp_path: Path) -> None:
    """After a 200 to a ranged GET, the next cold read of that location does not ask with
    Range again (the tape's reopening is a plain GET) until ``verdict_ttl`` has passed."""
    data = os.urandom(3 * CHUNK)
    url = python_http_store.put("verdict.img", data)
    backend = HttpBackend(HttpOptions(timeout=5), spool_dir=tmp_path / "spool", verdict_ttl=0.5)
    # Each read runs to the object's end, so its tape is done when it ends, and is dropped
    # at once: the next read is cold.
    backend.sequential.linger = 0
    try:
        for start in (0, CHUNK, 2 * CHUNK, CHUNK + 5):
            span = ByteRange(start, len(data))
            assert b"".join([p async for p in backend.read(url, span)]) == data[span.start:]
            if start == CHUNK:
                await asyncio.sleep(0.6)  # the verdict expires: the next read asks with Range again
        ranges = [rng for method, rng in python_http_store.requests if method == "GET"]
        assert [r is not None for r in ranges] == [True, False, True, False]
        assert backend.sequential.tapes_started == 4
    finally:
        await backend.aclose()


async def test_spool_dir_is_an_http_option(tmp_path: Path) -> None:
    backend = HttpBackend.from_url("http://store.invalid/", {"spool_dir": str(tmp_path / "spool"), "timeout": 2})
    try:
        assert backend.sequential.spool_dir == tmp_path / "spool" and backend.options.timeout == 2.0
    finally:
        await backend.aclose()
    with pytest.raises(ValueError, match="'spool_dir'"):
        HttpBackend.validate("http://store.invalid/", {"spool_dir": 3})
