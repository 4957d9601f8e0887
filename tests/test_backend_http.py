"""The http store: reads from real nginx, faults from the in-process fault server."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable

import pytest

from backends import PIECE_SIZE, Backends, BackendNotFound, BackendUnavailable, ByteRange
from backends.http import HttpBackend, HttpOptions
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
    assert all(r[2] is not None for r in faulty_server.requests)  # Range was asked every time
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
    backends = Backends("http://127.0.0.1:1/images", {"http": {"timeout": 2, "max_connections": 4}})
    try:
        assert isinstance(backends.default, HttpBackend)
        assert backends.default.options == HttpOptions(timeout=2.0, max_connections=4)
        assert backends.writable is None  # read-only store
        assert isinstance(backends.for_location("https://example.invalid/x"), HttpBackend)
    finally:
        await backends.aclose()


@pytest.mark.parametrize("options", [{"timeout": 0}, {"timeout": "soon"}, {"bogus": 1}, {"max_connections": 0}, {"verify": 3}])
def test_bad_options_name_the_key(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="http store option"):
        HttpOptions.from_mapping(options)
