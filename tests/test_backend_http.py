"""The http store: reads from real nginx, faults from the in-process fault server."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from backends import (
    PIECE_SIZE,
    BackendNotFound,
    Backends,
    BackendUnavailable,
    ByteRange,
    StoreConfig,
)
from backends.http import HttpBackend, HttpOptions
from backends.http_fast import FastTarget, fast_target
from bench.servers.nginx import NginxServer
from tests.requirements import require_nginx
from tests.backend_contract import ReadBackendContract, StoreUnderTest
from tests.faulty_http import FaultyServer, faulty_server  # noqa: F401 - fixture
from tests.nginx_fixtures import NginxStore, nginx_store, nginx_store_factory  # noqa: F401 - fixtures
from tests.server import free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def backend() -> AsyncIterator[HttpBackend]:
    b = HttpBackend(HttpOptions(timeout=5))
    yield b
    await b.aclose()


class TestHttpBackendContract(ReadBackendContract):
    """The read contract against real nginx; seeding writes into its web root."""

    @pytest.fixture
    async def store(self, backend: HttpBackend, nginx_store: NginxStore) -> StoreUnderTest:
        async def seed(name: str, data: bytes) -> str:
            return nginx_store.put(f"contract/{name}", data)

        return StoreUnderTest(backend=backend, seed=seed, location_of=lambda name: nginx_store.url(f"contract/{name}"))


async def read_all(backend: HttpBackend, location: str, byte_range: ByteRange | None = None) -> bytes:
    pieces = [piece async for piece in backend.read(location, byte_range)]
    assert all(0 < len(p) <= PIECE_SIZE for p in pieces)
    return b"".join(pieces)


# --- real nginx -------------------------------------------------------------------------


async def test_whole_read_and_size(backend: HttpBackend, nginx_store: NginxStore) -> None:
    data = os.urandom(PIECE_SIZE * 2 + 12345)
    url = nginx_store.put("whole.img", data)
    assert await backend.size(url) == len(data)
    assert await read_all(backend, url) == data


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, 1), (100_000, 300_000), (PIECE_SIZE - 10, PIECE_SIZE + 10), (PIECE_SIZE, 2 * PIECE_SIZE + 7), (5, 2 * PIECE_SIZE + 7)],
)
async def test_ranged_read_asks_only_those_bytes(backend: HttpBackend, nginx_store: NginxStore, start: int, end: int) -> None:
    data = os.urandom(2 * PIECE_SIZE + 7)
    url = nginx_store.put(f"ranged-{start}-{end}.img", data)
    before = len(nginx_store.log_lines())
    sent_before = nginx_store.server.bytes_sent()

    assert await read_all(backend, url, ByteRange(start, end)) == data[start:end]

    line = nginx_store.wait_for_log(before + 1)[before]
    assert line.startswith(f"GET /ranged-{start}-{end}.img 206 ")
    assert line.endswith(f'"bytes={start}-{end - 1}"')
    assert nginx_store.server.bytes_sent() - sent_before == end - start


async def test_missing_object_is_not_found(backend: HttpBackend, nginx_store: NginxStore) -> None:
    url = nginx_store.url("no-such.img")
    with pytest.raises(BackendNotFound):
        await backend.size(url)
    with pytest.raises(BackendNotFound):
        await read_all(backend, url)
    with pytest.raises(BackendNotFound):
        await read_all(backend, url, ByteRange(0, 10))


async def test_range_past_the_end_is_unavailable(backend: HttpBackend, nginx_store: NginxStore) -> None:
    url = nginx_store.put("short.img", b"x" * 1000)
    with pytest.raises(BackendUnavailable):
        await read_all(backend, url, ByteRange(1000, 1010))  # nginx: 416
    with pytest.raises(BackendUnavailable):
        await read_all(backend, url, ByteRange(990, 1010))  # nginx: 206 with 10 bytes


async def test_empty_object_and_empty_range(backend: HttpBackend, nginx_store: NginxStore) -> None:
    empty = nginx_store.put("empty.img", b"")
    assert await backend.size(empty) == 0
    assert await read_all(backend, empty) == b""
    url = nginx_store.put("ten.img", b"0123456789")
    assert await read_all(backend, url, ByteRange(4, 4)) == b""
    assert await read_all(backend, url, ByteRange(10, 10)) == b""
    with pytest.raises(BackendUnavailable):
        await read_all(backend, url, ByteRange(11, 11))
    with pytest.raises(BackendNotFound):
        await read_all(backend, nginx_store.url("none.img"), ByteRange(0, 0))


async def test_redirect_is_followed_with_range(backend: HttpBackend, nginx_store: NginxStore) -> None:
    data = os.urandom(50_000)
    nginx_store.put("target.img", data)
    moved = nginx_store.url("moved/target.img")
    assert await backend.size(moved) == len(data)
    assert await read_all(backend, moved, ByteRange(10, 20_000)) == data[10:20_000]


async def test_stopping_early_releases_the_connection(nginx_store: NginxStore) -> None:
    # One pooled connection: if closing the iterator did not release it, the next
    # request would wait for the pool and time out.
    b = HttpBackend(HttpOptions(timeout=3, max_connections=1))
    try:
        data = os.urandom(3 * PIECE_SIZE)
        url = nginx_store.put("early.img", data)
        stream = b.read(url)
        first = await anext(stream)
        assert first == data[: len(first)]
        await stream.aclose()  # type: ignore[attr-defined]
        assert await b.size(url) == len(data)
        assert await read_all(b, url, ByteRange(7, 70)) == data[7:70]
    finally:
        await b.aclose()


async def test_slow_store_still_reads_correctly(nginx_store_factory: Callable[..., NginxStore]) -> None:
    slow = nginx_store_factory(limit_rate="200k")
    data = os.urandom(300 * 1024)
    url = slow.put("slow.img", data)
    b = HttpBackend(HttpOptions(timeout=5))
    try:
        assert await read_all(b, url) == data
        assert await read_all(b, url, ByteRange(1000, 250_000)) == data[1000:250_000]
    finally:
        await b.aclose()


async def test_supports_ranges(backend: HttpBackend, nginx_store: NginxStore, faulty_server: FaultyServer) -> None:
    assert await backend.supports_ranges(nginx_store.put("r.img", b"abc"))
    faulty_server.objects["r"] = b"abc"
    assert not await backend.supports_ranges(faulty_server.location("norange", "r"))


# --- faults nginx cannot be told to produce ------------------------------------------------


async def test_truncated_body_is_unavailable(backend: HttpBackend, faulty_server: FaultyServer) -> None:
    faulty_server.objects["t"] = os.urandom(300_000)
    url = faulty_server.location("truncate", "t")
    with pytest.raises(BackendUnavailable):
        await read_all(backend, url)
    with pytest.raises(BackendUnavailable):
        await read_all(backend, url, ByteRange(1000, 200_000))


async def test_503_is_unavailable(backend: HttpBackend, faulty_server: FaultyServer) -> None:
    url = faulty_server.location("503", "x")
    with pytest.raises(BackendUnavailable):
        await backend.size(url)
    with pytest.raises(BackendUnavailable):
        await read_all(backend, url)


async def test_store_ignoring_range_still_gives_the_right_bytes(
    backend: HttpBackend, faulty_server: FaultyServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="backends.http")
    data = os.urandom(2 * PIECE_SIZE + 99)
    faulty_server.objects["n"] = data
    url = faulty_server.location("norange", "n")
    for start, end in [(0, 10), (PIECE_SIZE + 3, 2 * PIECE_SIZE + 99), (PIECE_SIZE - 1, PIECE_SIZE + 1)]:
        assert await read_all(backend, url, ByteRange(start, end)) == data[start:end]
    with pytest.raises(BackendUnavailable):
        await read_all(backend, url, ByteRange(len(data) - 1, len(data) + 1))
    # One GET with Range: its 200 was read once, sequentially, for all four ranged reads.
    assert [(r[0], r[2] is not None) for r in faulty_server.requests] == [("GET", True)]
    assert len([r for r in caplog.records if "ignores Range" in r.getMessage()]) == 1  # once per host


async def test_stalled_store_times_out(faulty_server: FaultyServer) -> None:
    faulty_server.objects["s"] = os.urandom(200_000)
    b = HttpBackend(HttpOptions(timeout=0.5))
    try:
        with pytest.raises(BackendUnavailable, match="timed out"):
            await read_all(b, faulty_server.location("stall", "s"))
    finally:
        await b.aclose()


async def test_connection_refused_is_unavailable(backend: HttpBackend) -> None:
    url = f"http://127.0.0.1:{free_port()}/nothing.img"
    with pytest.raises(BackendUnavailable):
        await backend.size(url)
    with pytest.raises(BackendUnavailable):
        await read_all(backend, url)


async def test_size_without_content_length_asks_a_range(backend: HttpBackend, faulty_server: FaultyServer) -> None:
    data = os.urandom(250_000)
    faulty_server.objects["l"] = data
    url = faulty_server.location("nolength", "l")
    assert await backend.size(url) == len(data)
    assert faulty_server.requests[-1] == ("GET", "/nolength/l", "bytes=0-0")
    assert await read_all(backend, url) == data  # chunked, no length to check against


async def test_redirects_are_bounded(backend: HttpBackend, faulty_server: FaultyServer) -> None:
    faulty_server.objects["d"] = b"data"
    assert await read_all(backend, faulty_server.location("redirect", "d")) == b"data"
    with pytest.raises(BackendUnavailable, match="redirect"):
        await read_all(backend, faulty_server.location("loop", "d"))


async def test_credentials_are_not_in_errors(backend: HttpBackend) -> None:
    url = f"http://user:s3cret@127.0.0.1:{free_port()}/x.img"
    with pytest.raises(BackendUnavailable) as info:
        await backend.size(url)
    assert "s3cret" not in str(info.value) and "s3cret" not in info.value.location


# --- configuration ----------------------------------------------------------------------


async def test_registry_builds_it_from_options() -> None:
    options = {"timeout": 2, "max_connections": 4}
    backends = Backends([StoreConfig("http", "http://127.0.0.1:1/images", options)], "http", {"http": options})
    try:
        assert isinstance(backends.default, HttpBackend)
        assert backends.default.options == HttpOptions(timeout=2.0, max_connections=4)
        assert backends.writable() is None and backends.read_only("http")
        assert isinstance(backends.for_location("https://example.invalid/x"), HttpBackend)
    finally:
        await backends.aclose()


@pytest.mark.parametrize("options", [{"timeout": 0}, {"timeout": "soon"}, {"bogus": 1}, {"max_connections": 0}, {"verify": 3}])
def test_bad_options_name_the_key(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="http store option"):
        HttpOptions.from_mapping(options)


# --- the lean ranged-GET path (backends/http_fast.py) ---------------------------------------

# nginx logs the connection serial and its request count, so reuse is seen from the server side.
_CONN_LOG = "log_format conn '$connection $connection_requests $status $request_uri';"
_CONN_BODY = """\
        root {root};
        access_log {prefix}/access.log bytes;
        access_log {prefix}/conn.log conn;
        {extra}
        location /moved/ {{ rewrite ^/moved/(.*)$ /$1 redirect; }}
"""


@pytest.fixture
def conn_nginx(tmp_path: Path) -> Iterator[Callable[..., NginxStore]]:
    """``make(extra="keepalive_timeout 200ms;")``: nginx stores that log connection reuse."""
    started: list[NginxStore] = []

    def make(extra: str = "") -> NginxStore:
        require_nginx()
        prefix = tmp_path / f"conn-nginx{len(started)}"
        root = prefix / "root"
        root.mkdir(parents=True)
        body = _CONN_BODY.format(root=root, prefix=(prefix / "nginx").resolve(), extra=extra)
        store = NginxStore(NginxServer(prefix / "nginx", body, http_extra=_CONN_LOG).start(), root)
        started.append(store)
        return store

    yield make
    for store in started:
        store.server.stop()


def connections(store: NginxStore, count: int) -> list[tuple[str, int, int]]:
    """``(connection, request number on it, status)`` per logged request, once ``count`` are logged."""
    store.wait_for_log(count)
    log = store.server.prefix / "conn.log"
    deadline = time.monotonic() + 5
    lines = log.read_text().splitlines()
    while len(lines) < count and time.monotonic() < deadline:
        time.sleep(0.01)
        lines = log.read_text().splitlines()
    return [(c, int(n), int(s)) for c, n, s, _ in (line.split(" ") for line in lines)]


async def test_ranged_reads_reuse_one_kept_alive_connection(conn_nginx: Callable[..., NginxStore]) -> None:
    store = conn_nginx()
    data = os.urandom(6 * PIECE_SIZE + 5)
    url = store.put("fast.img", data)
    b = HttpBackend(HttpOptions(timeout=5))
    try:
        chunk = 4 * PIECE_SIZE
        pieces = [p async for p in b.read(url, ByteRange(0, chunk))]
        assert b"".join(pieces) == data[:chunk]
        assert all(0 < len(p) <= PIECE_SIZE for p in pieces) and len(pieces) <= 8  # few, large pieces
        for start, end in [(chunk, len(data)), (7, 7 + PIECE_SIZE), (len(data) - 1, len(data))]:
            assert await read_all(b, url, ByteRange(start, end)) == data[start:end]
        assert b.fast_stats.reads == 4 and b.fast_stats.fallbacks == 0
        assert (b.fast_stats.connects, b.fast_stats.reuses) == (1, 3)
    finally:
        await b.aclose()
    seen = connections(store, 4)
    assert len({c for c, _, _ in seen}) == 1  # one TCP connection...
    assert [(n, s) for _, n, s in seen] == [(1, 206), (2, 206), (3, 206), (4, 206)]  # ...four requests


async def test_early_stop_closes_the_connection(conn_nginx: Callable[..., NginxStore]) -> None:
    store = conn_nginx()
    data = os.urandom(3 * PIECE_SIZE)
    url = store.put("early.img", data)
    b = HttpBackend(HttpOptions(timeout=5))
    try:
        stream = b.read(url, ByteRange(0, len(data)))
        first = await anext(stream)
        assert first == data[: len(first)]
        await stream.aclose()  # type: ignore[attr-defined]
        assert await read_all(b, url, ByteRange(5, 500)) == data[5:500]
        assert (b.fast_stats.reads, b.fast_stats.connects, b.fast_stats.reuses) == (2, 2, 0)
    finally:
        await b.aclose()
    seen = connections(store, 2)
    assert seen[0][0] != seen[1][0] and seen[1][1] == 1  # the second read came on a new connection


async def test_server_closing_connections_is_followed(conn_nginx: Callable[..., NginxStore]) -> None:
    data = os.urandom(100_000)
    b = HttpBackend(HttpOptions(timeout=5))
    try:
        # "Connection: close" on every answer: nothing is pooled.
        once = conn_nginx("keepalive_requests 1;")
        url = once.put("once.img", data)
        for start in (0, 10, 20):
            assert await read_all(b, url, ByteRange(start, start + 1000)) == data[start : start + 1000]
        assert (b.fast_stats.connects, b.fast_stats.reuses) == (3, 0)
        # Idle connections dropped by the server after 100 ms: the next read opens a fresh one.
        brief = conn_nginx("keepalive_timeout 100ms;")
        url = brief.put("brief.img", data)
        assert await read_all(b, url, ByteRange(0, 1000)) == data[:1000]
        connections(brief, 1)
        await asyncio.sleep(0.5)
        assert await read_all(b, url, ByteRange(1000, 2000)) == data[1000:2000]
        assert b.fast_stats.reads == 5 and b.fast_stats.fallbacks == 0
    finally:
        await b.aclose()
    assert [n for _, n, _ in connections(brief, 2)] == [1, 1]


async def test_concurrent_ranged_reads_share_a_bounded_pool(conn_nginx: Callable[..., NginxStore]) -> None:
    store = conn_nginx()
    data = os.urandom(2 * PIECE_SIZE)
    url = store.put("herd.img", data)
    b = HttpBackend(HttpOptions(timeout=5, max_connections=2))
    try:
        spans = [(i * 100_000, i * 100_000 + PIECE_SIZE) for i in range(8)]
        got = await asyncio.gather(*(read_all(b, url, ByteRange(s, e)) for s, e in spans))
        assert got == [data[s:e] for s, e in spans]
        assert b.fast_stats.reads == 8 and b.fast_stats.connects <= 2
    finally:
        await b.aclose()
    assert len({c for c, _, _ in connections(store, 8)}) <= 2


async def test_other_answers_fall_back_to_httpx(backend: HttpBackend, nginx_store: NginxStore, faulty_server: FaultyServer) -> None:
    data = os.urandom(50_000)
    nginx_store.put("fb.img", data)
    faulty_server.objects["fb"] = data
    assert await read_all(backend, nginx_store.url("moved/fb.img"), ByteRange(1, 999)) == data[1:999]  # 302
    with pytest.raises(BackendNotFound):
        await read_all(backend, nginx_store.url("nothing-here.img"), ByteRange(0, 10))  # 404
    with pytest.raises(BackendUnavailable):
        await read_all(backend, faulty_server.location("503", "fb"), ByteRange(0, 10))  # 503
    with pytest.raises(BackendUnavailable):
        await read_all(backend, nginx_store.url("fb.img"), ByteRange(len(data), len(data) + 1))  # 416
    assert backend.fast_stats.reads == 0 and backend.fast_stats.fallbacks == 4
    # A 200 with a length (Range ignored) stays on the fast path: it is the object's one read.
    assert await read_all(backend, faulty_server.location("norange", "fb"), ByteRange(5, 50)) == data[5:50]
    assert (backend.fast_stats.reads, backend.fast_stats.wholes, backend.fast_stats.fallbacks) == (1, 1, 4)
    # The shorter-than-asked 206 is told on the fast path itself, as before.
    with pytest.raises(BackendUnavailable, match="shorter"):
        await read_all(backend, nginx_store.url("fb.img"), ByteRange(len(data) - 5, len(data) + 5))


async def test_stalled_ranged_read_times_out(faulty_server: FaultyServer) -> None:
    faulty_server.objects["s"] = os.urandom(200_000)
    b = HttpBackend(HttpOptions(timeout=0.5))
    try:
        with pytest.raises(BackendUnavailable, match="timed out"):
            await read_all(b, faulty_server.location("stall", "s"), ByteRange(10, 190_000))
        assert b.fast_stats.reads == 1
    finally:
        await b.aclose()


async def test_truncated_206_is_unavailable(backend: HttpBackend, faulty_server: FaultyServer) -> None:
    faulty_server.objects["t"] = os.urandom(300_000)
    with pytest.raises(BackendUnavailable, match="sent 99500 of 199000 bytes"):
        await read_all(backend, faulty_server.location("truncate", "t"), ByteRange(1000, 200_000))
    assert backend.fast_stats.reads == 1
    assert await read_all(backend, faulty_server.location("ok", "t"), ByteRange(0, 10)) == faulty_server.objects["t"][:10]


@pytest.mark.parametrize(
    "url",
    ["https://127.0.0.1/x.img", "http://user:pw@127.0.0.1/x.img", "http://127.0.0.1/a b.img", "http://127.0.0.1/é.img", "http://127.0.0.1:x/"],
)
def test_only_plain_http_urls_take_the_fast_path(url: str) -> None:
    assert fast_target(url) is None


def test_fast_target_keeps_query_and_host() -> None:
    assert fast_target("http://[::1]:8080/a/b.img?sig=1#frag") == FastTarget("::1", 8080, "[::1]:8080", "/a/b.img?sig=1")
    assert fast_target("HTTP://store") == FastTarget("store", 80, "store", "/")


async def test_proxied_reads_stay_on_httpx(nginx_store: NginxStore) -> None:
    # The "proxy" here is nginx itself, which answers absolute-URI requests for its own files.
    data = os.urandom(5000)
    url = nginx_store.put("proxied.img", data)
    b = HttpBackend(HttpOptions(timeout=5, proxy=nginx_store.server.url))
    try:
        assert await read_all(b, url, ByteRange(10, 20)) == data[10:20]
        assert b.fast_stats.reads == b.fast_stats.fallbacks == 0
    finally:
        await b.aclose()


def test_fast_path_under_uvloop(nginx_store: NginxStore) -> None:
    # The service runs on uvloop, whose transports differ from asyncio's (BufferedProtocol, pause/resume).
    import uvloop  # uvicorn[standard] brings it; the service runs on it

    data = os.urandom(2 * PIECE_SIZE + 3)
    url = nginx_store.put("uv.img", data)

    async def run() -> tuple[bytes, bytes, int, int]:
        b = HttpBackend(HttpOptions(timeout=5))
        try:
            first = await read_all(b, url, ByteRange(1, len(data)))
            second = await read_all(b, url, ByteRange(0, 10))
            return first, second, b.fast_stats.reads, b.fast_stats.reuses
        finally:
            await b.aclose()

    assert uvloop.run(run()) == (data[1:], data[:10], 2, 1)
