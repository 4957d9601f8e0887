"""The s3 store: the store contract against real S3 servers, plus what is particular to S3."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator

import obstore
import pytest

from backends import BackendError, BackendFull, BackendNotFound, Backends, BackendUnavailable, ByteRange, StoreConfig
from backends.s3 import S3Backend
from backends.s3_options import MiB, S3Options
from backends.s3_writer import S3Writer
from imgproxy.settings import load_settings
from tests.backend_contract import StoreUnderTest, WriteBackendContract, collect, payload
from tests.nginx_fixtures import NginxStore, nginx_store  # noqa: F401 - fixture
from tests.s3_fixtures import S3Server, s3_prefix, s3_server  # noqa: F401 - fixtures
from tests.server import free_port

pytestmark = pytest.mark.timeout(120)


def _backend(server: S3Server, prefix: str, **options: object) -> S3Backend:
    return S3Backend.from_url(server.url(prefix), server.options(**options))


@pytest.fixture
async def backend(s3_server: S3Server, s3_prefix: str) -> AsyncIterator[S3Backend]:
    b = _backend(s3_server, s3_prefix, part_size=5 * MiB)
    yield b
    await b.aclose()


class TestS3BackendContract(WriteBackendContract):
    """The read and write contract; seeding goes through a client of its own, not the backend."""

    @pytest.fixture
    async def store(self, backend: S3Backend, s3_server: S3Server, s3_prefix: str) -> StoreUnderTest:
        raw = s3_server.raw(s3_prefix)

        async def seed(name: str, data: bytes) -> str:
            await obstore.put_async(raw, name, data, use_multipart=False)
            return backend.location_for(name)

        async def leftovers() -> set[str]:
            return s3_server.files(s3_prefix)

        return StoreUnderTest(backend=backend, seed=seed, location_of=backend.location_for, leftovers=leftovers)


class TestS3BackendContractObstoreRanges(TestS3BackendContract):
    """The same contract with ranged reads through obstore (``presigned_ranges = false``)."""

    @pytest.fixture
    async def backend(self, s3_server: S3Server, s3_prefix: str) -> AsyncIterator[S3Backend]:
        b = _backend(s3_server, s3_prefix, part_size=5 * MiB, presigned_ranges=False)
        yield b
        await b.aclose()


async def test_obstore_ranges_from_a_server_that_answers_206(nginx_store: NginxStore) -> None:
    """obstore's own ranged reads, against a server that answers 206 as S3 does (nginx serving the
    bucket as a directory; it ignores the signature, which is all this read path needs)."""
    data = payload(3 * MiB + 7, 47)
    nginx_store.put("bucket/image", data)
    backend = S3Backend.from_url("s3://bucket", {"endpoint": nginx_store.server.url, "allow_http": True,
                                                 "access_key": "k" * 12, "secret_key": "s" * 20,
                                                 "presigned_ranges": False})
    location = backend.location_for("image")
    for start, end in ((0, 10), (MiB - 3, 2 * MiB + 5), (0, len(data))):
        pieces = await collect(backend.read(location, ByteRange(start, end)))
        assert b"".join(pieces) == data[start:end] and all(0 < len(p) <= MiB for p in pieces)
    with pytest.raises(BackendUnavailable):
        await collect(backend.read(location, ByteRange(len(data) - 2, len(data) + 2)))
    with pytest.raises(BackendNotFound):
        await collect(backend.read(backend.location_for("missing"), ByteRange(0, 1)))
    await backend.aclose()


# --- multipart uploads ---------------------------------------------------------------


async def _write(writer: object, data: bytes, step: int = 4 * MiB) -> None:
    for i in range(0, len(data), step):
        await writer.write(data[i : i + step])  # type: ignore[attr-defined]


async def test_large_upload_goes_multipart_and_reads_back(backend: S3Backend, s3_server: S3Server, s3_prefix: str) -> None:
    data = payload(13 * MiB + 5, 40)  # three 5 MiB parts, the last one short
    writer = await backend.open_writer("big")
    await _write(writer, data, MiB)
    seen: set[str] = set()
    for _ in range(100):  # the parts go up in the background: wait until the server holds some
        seen = s3_server.files(s3_prefix)
        if seen:
            break
        await asyncio.sleep(0.05)
    assert seen and "big" not in {name.rsplit("/", 1)[-1] for name in seen}  # an upload, not yet the object
    with pytest.raises(BackendNotFound):
        await backend.size(backend.location_for("big"))
    location = await writer.commit()
    assert await backend.size(location) == len(data)
    assert b"".join(await collect(backend.read(location))) == data
    assert s3_server.files(s3_prefix) == {f"{s3_prefix}/big"}


async def test_abort_mid_multipart_upload_leaves_nothing(backend: S3Backend, s3_server: S3Server, s3_prefix: str) -> None:
    writer = await backend.open_writer("cut")
    await _write(writer, payload(12 * MiB, 41), MiB)
    for _ in range(100):
        if s3_server.files(s3_prefix):  # a part reached the server
            break
        await asyncio.sleep(0.05)
    assert s3_server.files(s3_prefix), "the multipart upload should have started"
    await writer.abort()
    assert s3_server.files(s3_prefix) == set()
    with pytest.raises(BackendNotFound):
        await backend.size(backend.location_for("cut"))
    with pytest.raises(BackendError):
        await writer.write(b"more")


async def test_an_image_over_the_part_bound_is_refused_and_leaves_nothing(
        backend: S3Backend, s3_server: S3Server, s3_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 takes at most 10,000 parts, so 10,000 * part_size bounds an image: the write that
    would pass it is refused as a full store (413 to the uploader), and the upload is aborted.
    The bound is lowered to 3 parts (15 MiB) so that the test does not send 50 GiB."""
    monkeypatch.setattr(S3Writer, "MAX_PARTS", 3)
    writer = await backend.open_writer("huge")
    data = payload(16 * MiB, 44)
    with pytest.raises(BackendFull, match="in 3 parts of 5242880 bytes"):
        await _write(writer, data, MiB)
    assert writer.bytes_written == 15 * MiB
    assert s3_server.files(s3_prefix) == set()
    with pytest.raises(BackendNotFound):
        await backend.size(backend.location_for("huge"))


async def test_retried_large_upload_replaces_the_object(backend: S3Backend, s3_server: S3Server, s3_prefix: str) -> None:
    for seed in (42, 43):
        data = payload(11 * MiB, seed)
        writer = await backend.open_writer("again")
        await _write(writer, data)
        location = await writer.commit()
    assert b"".join(await collect(backend.read(location, ByteRange(5 * MiB - 3, 6 * MiB)))) == data[5 * MiB - 3 : 6 * MiB]
    assert s3_server.files(s3_prefix) == {f"{s3_prefix}/again"}


@pytest.mark.parametrize("size", [MiB, 11 * MiB])  # one PUT; a multipart upload
@pytest.mark.parametrize("steps", [0, 1, 2, 4])
async def test_cancelled_commit_leaves_nothing(backend: S3Backend, s3_server: S3Server, s3_prefix: str,
                                               size: int, steps: int) -> None:
    """A request cancelled while the upload completes: the abort that follows removes the object."""
    writer = await backend.open_writer("cancelled")
    await _write(writer, payload(size, 44))
    commit = asyncio.ensure_future(writer.commit())
    for _ in range(steps):
        await asyncio.sleep(0)
    commit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await commit
    await writer.abort()
    assert s3_server.files(s3_prefix) == set()


# --- reads ------------------------------------------------------------------------


async def test_parallel_ranged_reads_as_a_fill_makes_them(backend: S3Backend, s3_server: S3Server, s3_prefix: str) -> None:
    data = payload(9 * MiB + 77, 45)
    await obstore.put_async(s3_server.raw(s3_prefix), "ranged", data)
    location = backend.location_for("ranged")
    spans = [ByteRange(start, min(start + 2 * MiB, len(data))) for start in range(0, len(data), 2 * MiB)]
    results = await asyncio.gather(*(collect(backend.read(location, span)) for span in spans))
    for span, pieces in zip(spans, results):
        assert b"".join(pieces) == data[span.start : span.end]
        assert all(0 < len(p) <= MiB for p in pieces)


# --- naming and options -----------------------------------------------------------


@pytest.mark.parametrize("url", ["s3://", "s3://UPPER/x", "s3://b/x?y=1", "s3://key:secret@bucket/x", "s3://bucket/a/../b"])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(BackendError):
        S3Backend.from_url(url, {})


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"endpoint": "http://127.0.0.1:9000"}, "allow_http"),
        ({"endpoint": "ftp://host"}, "endpoint"),
        ({"access_key": "AKIA"}, "secret_key"),
        ({"part_size": 1024}, "part_size"),
        ({"path_style": "yes"}, "path_style"),
        ({"bucket_name": "x"}, "bucket_name"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, object], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        S3Options.from_mapping(options)


def test_locations_outside_the_store_are_refused() -> None:
    backend = S3Backend.from_url("s3://images/glance", {})
    assert backend.location_for("abc") == "s3://images/glance/abc"
    assert backend.key_for("s3://images/glance/abc") == "abc"
    for location in ("s3://other/glance/abc", "s3://images/abc", "s3://images/glance/a/b", "s3://images/glance/.x",
                     "file:///images/glance/abc"):
        with pytest.raises(BackendError):
            backend.key_for(location)


def test_registry_picks_s3() -> None:
    backends = Backends([StoreConfig("s3", "s3://images/prefix", {"region": "eu-west-1"})], "s3")
    assert isinstance(backends.default, S3Backend)
    assert backends.writable() is backends.default
    assert backends.default.options.region == "eu-west-1"


def test_secret_keys_come_from_the_environment_and_never_show(tmp_path: os.PathLike[str]) -> None:
    settings = load_settings(environ={"IMGPROXY_STORE": "s3://images", "IMGPROXY_S3_ACCESS_KEY": "AKIAENV",
                                      "IMGPROXY_S3_SECRET_KEY": "env-secret-value"})
    assert settings.extra["s3"] == {"access_key": "AKIAENV", "secret_key": "env-secret-value"}
    backend = S3Backend.from_url(settings.store_url, settings.extra["s3"])
    assert backend.options.access_key == "AKIAENV"
    for text in (repr(settings), repr(backend), repr(backend.options), str(backend.options.secret_key)):
        assert "env-secret-value" not in text


# --- failures ---------------------------------------------------------------------


async def test_wrong_secret_is_unavailable_and_never_in_the_message(s3_server: S3Server, s3_prefix: str) -> None:
    secret = "wrong-but-still-a-secret-123"
    backend = _backend(s3_server, s3_prefix, secret_key=secret)
    location = backend.location_for("x")
    for attempt in (backend.size(location), collect(backend.read(location)), backend.check(), backend.delete(location)):
        with pytest.raises(BackendUnavailable) as info:
            await attempt
        assert secret not in str(info.value)
        assert s3_server.bucket in str(info.value) and s3_server.endpoint in str(info.value)  # names the store
    writer = await backend.open_writer("x")
    await writer.write(b"data")
    with pytest.raises(BackendUnavailable) as info:
        await writer.commit()
    assert secret not in str(info.value) and "403" in str(info.value)
    await backend.aclose()


async def test_unreachable_endpoint_is_unavailable() -> None:
    backend = S3Backend.from_url("s3://images/x", {"endpoint": f"http://127.0.0.1:{free_port()}", "allow_http": True,
                                                 "access_key": "k" * 12, "secret_key": "s" * 20, "retries": 0})
    with pytest.raises(BackendUnavailable, match="s3://images/x at http://127.0.0.1"):
        await backend.size(backend.location_for("img"))
    with pytest.raises(BackendUnavailable):
        await backend.check()
    await backend.aclose()


async def test_check_tells_a_missing_bucket(s3_server: S3Server) -> None:
    good = S3Backend.from_url(f"s3://{s3_server.bucket}/any", s3_server.options())
    await good.check()
    missing = S3Backend.from_url("s3://no-such-bucket/any", s3_server.options())
    with pytest.raises(BackendUnavailable, match="no-such-bucket"):
        await missing.check()
    backends = Backends([StoreConfig("s3", "s3://no-such-bucket/any", s3_server.options())], "s3")
    [(name, reason)] = await backends.check(10)
    assert "no-such-bucket" in name and "no-such-bucket" in reason


async def test_server_quirk_is_logged_once(s3_server: S3Server, s3_prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """rclone answers ranged GETs with 200 + Content-Range, which obstore refuses: the store says
    so once and reads on through presigned URLs."""
    backend = _backend(s3_server, s3_prefix, presigned_ranges=False)
    data = payload(3 * MiB, 46)
    await obstore.put_async(s3_server.raw(s3_prefix), "quirk", data)
    location = backend.location_for("quirk")
    with caplog.at_level(logging.WARNING, logger="backends.s3"):
        for start in (0, MiB, 2 * MiB):
            assert b"".join(await collect(backend.read(location, ByteRange(start, start + MiB)))) == data[start : start + MiB]
    quirk = [r for r in caplog.records if "ranged GETs with 200" in r.getMessage()]
    assert len(quirk) == (1 if s3_server.kind == "rclone" else 0)
    await backend.aclose()
