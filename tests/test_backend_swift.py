"""The swift store against a real Swift all-in-one on loopback (tempauth; its S3 API too)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backends import Backends, BackendUnavailable, ByteRange, StoreConfig
from backends.swift import SwiftBackend
from backends.swift_writer import SEGMENTS_DIR
from bench.servers.swift import SwiftServer
from imgproxy.settings import load_settings
from tests.backend_contract import StoreUnderTest, WriteBackendContract, collect, payload
from tests.server import free_port
from tests.swift_fixtures import new_container, start_swift, swift_api, swift_server  # noqa: F401 - fixture
from tests.swift_fixtures import object_names as names, store_options as options

pytestmark = pytest.mark.timeout(120)

# Small segments, so the contract's 2 MiB objects are static large objects of several.
SEGMENT = 700_000


@pytest.fixture(scope="module")
def api(swift_server: SwiftServer) -> Iterator[httpx.Client]:
    with swift_api(swift_server) as client:
        yield client


@pytest.fixture
async def container_store(swift_server: SwiftServer, api: httpx.Client) -> AsyncIterator[tuple[SwiftBackend, str]]:
    container = new_container(api)
    backend = SwiftBackend.from_url(f"swift://{container}", options(swift_server, segment_size=SEGMENT))
    yield backend, container
    await backend.aclose()


def _under_test(backend: SwiftBackend, container: str, api: httpx.Client) -> StoreUnderTest:
    async def seed(name: str, data: bytes) -> str:
        assert api.put(f"/{container}/{name}", content=data).status_code == 201
        return f"swift://{container}/{name}"

    async def leftovers() -> set[str]:
        return names(api, container)

    return StoreUnderTest(
        backend=backend, seed=seed, location_of=lambda name: f"swift://{container}/{name}", leftovers=leftovers
    )


class TestSwiftContract(WriteBackendContract):
    """Small segments: uploads past 700 kB become static large objects."""

    @pytest.fixture
    def store(self, container_store: tuple[SwiftBackend, str], api: httpx.Client) -> StoreUnderTest:
        return _under_test(*container_store, api)


class TestSwiftContractSinglePut(WriteBackendContract):
    """The default segment size: every contract upload is one PUT."""

    @pytest.fixture
    async def store(self, swift_server: SwiftServer, api: httpx.Client) -> AsyncIterator[StoreUnderTest]:
        container = new_container(api)
        backend = SwiftBackend.from_url(f"swift://{container}", options(swift_server))
        yield _under_test(backend, container, api)
        await backend.aclose()


# --- what is particular to Swift ----------------------------------------------------------


async def write(backend: SwiftBackend, image_id: str, data: bytes, piece: int = 300_000) -> str:
    writer = await backend.open_writer(image_id)
    for i in range(0, len(data), piece):
        await writer.write(data[i : i + piece])
    return await writer.commit()


async def test_large_upload_is_an_slo_of_bounded_segments(container_store: tuple[SwiftBackend, str], api: httpx.Client) -> None:
    backend, container = container_store
    data = payload(3 * SEGMENT + 4321, 40)
    location = await write(backend, "big", data, piece=1_000_000)
    assert location == f"swift://{container}/big"

    head = api.head(f"/{container}/big")
    assert head.headers["x-static-large-object"].lower() == "true"
    manifest = api.get(f"/{container}/big", params={"multipart-manifest": "get"}).json()
    assert [entry["bytes"] for entry in manifest] == [SEGMENT, SEGMENT, SEGMENT, 4321]
    assert all(entry["name"].startswith(f"/{container}/{SEGMENTS_DIR}big/") for entry in manifest)
    assert hashlib.md5(data[:SEGMENT]).hexdigest() == manifest[0]["hash"]

    assert await backend.size(location) == len(data)
    assert b"".join(await collect(backend.read(location))) == data
    start, end = SEGMENT - 10, 2 * SEGMENT + 10  # across two segment boundaries
    assert b"".join(await collect(backend.read(location, ByteRange(start, end)))) == data[start:end]

    await backend.delete(location)
    assert names(api, container) == set()


async def test_small_upload_is_one_plain_object(container_store: tuple[SwiftBackend, str], api: httpx.Client) -> None:
    backend, container = container_store
    data = payload(SEGMENT, 41)  # exactly one segment's worth: still one PUT
    await write(backend, "small", data)
    head = api.head(f"/{container}/small")
    assert "x-static-large-object" not in head.headers
    assert head.headers["etag"].strip('"') == hashlib.md5(data).hexdigest()
    assert names(api, container) == {"small"}


async def test_replacing_a_large_object_removes_its_old_segments(
    container_store: tuple[SwiftBackend, str], api: httpx.Client
) -> None:
    backend, container = container_store
    await write(backend, "again", payload(2 * SEGMENT + 1, 42))
    old = names(api, container)
    newer = payload(2 * SEGMENT + 2, 43)
    location = await write(backend, "again", newer)
    now = names(api, container)
    assert len(now) == 4 and not (now - {"again"}) & old  # the manifest + 3 new segments, none of the old
    assert b"".join(await collect(backend.read(location))) == newer
    await write(backend, "again", b"small now")
    assert names(api, container) == {"again"}


async def test_abort_mid_segment_leaves_nothing(container_store: tuple[SwiftBackend, str], api: httpx.Client) -> None:
    backend, container = container_store
    writer = await backend.open_writer("cut")
    await writer.write(payload(SEGMENT + SEGMENT // 2, 44))  # one whole segment, one half-sent
    assert any(name.startswith(SEGMENTS_DIR) for name in names(api, container))
    await writer.abort()
    assert names(api, container) == set()


def seed_glance_dlo(api: httpx.Client, container: str, obj: str, data: bytes, chunk: int) -> None:
    """Write ``data`` exactly as glance_store's swift driver writes a large image: segments
    ``<obj>-00001``.. in the same container, then a zero-byte manifest naming their prefix."""
    for number, start in enumerate(range(0, len(data), chunk), 1):
        assert api.put(f"/{container}/{obj}-{number:05d}", content=data[start : start + chunk]).status_code == 201
    response = api.put(f"/{container}/{obj}", content=b"", headers={"X-Object-Manifest": f"{container}/{obj}-"})
    assert response.status_code == 201


async def test_reads_glance_dynamic_large_objects(container_store: tuple[SwiftBackend, str], api: httpx.Client) -> None:
    backend, container = container_store
    chunk = 400_000
    data = payload(5 * chunk + 777, 45)
    image_id = "5e7c1c3a-0f5e-4b8e-9d5e-9a1d2f3b4c5d"
    seed_glance_dlo(api, container, image_id, data, chunk)
    location = f"swift://{container}/{image_id}"

    assert await backend.size(location) == len(data)
    pieces = await collect(backend.read(location))
    assert b"".join(pieces) == data and all(len(p) <= 1024 * 1024 for p in pieces)
    for start, end in [(0, 10), (chunk - 5, chunk + 5), (chunk, 3 * chunk + 1), (len(data) - 100, len(data)), (0, len(data))]:
        assert b"".join(await collect(backend.read(location, ByteRange(start, end)))) == data[start:end]
    with pytest.raises(BackendUnavailable):
        await collect(backend.read(location, ByteRange(len(data) - 1, len(data) + 1)))

    await backend.delete(location)
    assert names(api, container) == set()  # the manifest and its six segments


async def test_ranged_reads_take_the_lean_client(container_store: tuple[SwiftBackend, str], api: httpx.Client) -> None:
    """A cache fill is ranged reads: of a plain object, a static and a dynamic large object they
    all go over the lean client (backends.http_fast) with the token, and deliver the same bytes."""
    backend, container = container_store
    data = payload(3 * SEGMENT + 11, 47)
    assert api.put(f"/{container}/plain", content=data).status_code == 201
    seed_glance_dlo(api, container, "dlo", data, SEGMENT)
    locations = [f"swift://{container}/plain", f"swift://{container}/dlo", await write(backend, "slo", data)]
    ranges = [(0, 1), (SEGMENT - 3, SEGMENT + 3), (5, 2 * SEGMENT + 9), (0, len(data))]
    for location in locations:
        for start, end in ranges:
            assert b"".join(await collect(backend.read(location, ByteRange(start, end)))) == data[start:end]
    assert (backend.fast.stats.reads, backend.fast.stats.fallbacks) == (len(locations) * len(ranges), 0)
    assert b"".join(await collect(backend.read(locations[0]))) == data  # a whole read: httpx
    assert backend.fast.stats.reads == len(locations) * len(ranges)


async def test_expired_tokens_are_renewed(tmp_path: Path) -> None:
    with start_swift(tmp_path / "swift", token_life=1) as server:
        data = payload(2 * SEGMENT + 5, 46)
        with swift_api(server) as api:
            assert api.put("/renew").status_code == 201
            assert api.put("/renew/img", content=data).status_code == 201
        backend = SwiftBackend.from_url("swift://renew", options(server, segment_size=SEGMENT))
        location = "swift://renew/img"
        try:
            assert b"".join(await collect(backend.read(location, ByteRange(0, 10)))) == data[:10]
            assert (backend.stats.logins, backend.stats.renewals) == (1, 0)
            await asyncio.sleep(2.2)  # the token tempauth gave is now expired (Fernet counts whole seconds)
            assert b"".join(await collect(backend.read(location, ByteRange(5, SEGMENT + 5)))) == data[5 : SEGMENT + 5]
            assert (backend.stats.logins, backend.stats.renewals) == (2, 1)  # one 401, one new login
            # The lean client handed the 401 to httpx, which renewed the token; the next read is lean again.
            assert (backend.fast.stats.reads, backend.fast.stats.fallbacks) == (1, 1)
            assert b"".join(await collect(backend.read(location, ByteRange(1, 9)))) == data[1:9]
            assert (backend.fast.stats.reads, backend.fast.stats.fallbacks) == (2, 1)
            await asyncio.sleep(2.2)
            assert await backend.size(location) == len(data)
            assert (backend.stats.logins, backend.stats.renewals) == (3, 2)
            # A streamed segment cannot be sent again after a 401, so a token this short is
            # renewed before each segment: the upload meets no 401 at all.
            location = await write(backend, "img2", data)
            assert backend.stats.renewals == 2 and backend.stats.logins > 3
            assert b"".join(await collect(backend.read(location))) == data
        finally:
            await backend.aclose()


@pytest.mark.parametrize("problem", ["bad key", "unknown user", "unreachable"])
async def test_unusable_credentials_are_unavailable_and_name_the_store(swift_server: SwiftServer, problem: str) -> None:
    opts = options(swift_server, key="not-the-key") if problem == "bad key" else options(swift_server)
    if problem == "unknown user":
        opts["user"] = "test:nobody"
    if problem == "unreachable":
        opts["auth_url"] = f"http://127.0.0.1:{free_port()}/auth/v1.0"
    backend = SwiftBackend.from_url("swift://images/pre", opts)
    try:
        for attempt in (backend.check(), backend.size("swift://images/pre/x"), backend.open_writer("x"),
                        collect(backend.read("swift://images/pre/x"))):
            with pytest.raises(BackendUnavailable) as info:
                await attempt
            assert "swift://images/pre" in str(info.value)
            assert "not-the-key" not in str(info.value) and swift_server.key not in str(info.value)
    finally:
        await backend.aclose()


async def test_keystone_auth_that_cannot_log_in_is_unavailable() -> None:
    # No Keystone runs here: this checks that the keystoneauth1 path (in a thread) fails cleanly.
    backend = SwiftBackend.from_url("swift://images", {
        "auth_url": f"http://127.0.0.1:{free_port()}/v3", "user": "glance", "key": "secret-pw", "project_name": "service",
        "timeout": 2,
    })
    assert backend.options.auth_version == "3"
    try:
        with pytest.raises(BackendUnavailable, match="swift://images: Keystone") as info:
            await backend.size("swift://images/x")
        assert "secret-pw" not in str(info.value)
    finally:
        await backend.aclose()


@pytest.mark.parametrize(
    ("opts", "key"),
    [
        ({}, "auth_url"),
        ({"auth_url": "http://h/auth/v1.0", "user": "u"}, "key"),
        ({"auth_url": "ftp://h/", "user": "u", "key": "k"}, "auth_url"),
        ({"auth_url": "http://h/v3", "user": "u", "key": "k"}, "project_name"),
        ({"auth_url": "http://h/auth/v1.0", "user": "u", "key": "k", "segment_size": 0}, "segment_size"),
        ({"auth_url": "http://h/auth/v1.0", "user": "u", "key": "k", "colour": "red"}, "colour"),
    ],
)
def test_bad_options_name_the_key(opts: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=repr(key)):
        SwiftBackend.from_url("swift://images", opts)


def test_urls_and_names() -> None:
    opts = {"auth_url": "http://h/auth/v1.0", "user": "u", "key": "k"}
    backend = SwiftBackend.from_url("swift://images/glance/cache", opts)
    assert backend.location_for("abc") == "swift://images/glance/cache/abc"
    assert "k'" not in repr(backend.options)
    for bad in ("swift:///x", "swift://a/b?c=1", "file:///x"):
        with pytest.raises(Exception):
            SwiftBackend.from_url(bad, opts)


async def test_registry_picks_swift_and_needs_its_options(swift_server: SwiftServer) -> None:
    backends = Backends([StoreConfig("swift", "swift://images", options(swift_server))], "swift")
    assert isinstance(backends.default, SwiftBackend) and backends.writable() is backends.default
    assert await backends.check(5) == []
    await backends.aclose()
    other = Backends([StoreConfig("file", Path("/tmp").as_uri())], "file")
    with pytest.raises(BackendUnavailable, match="no swift store is configured"):
        other.for_location("swift://images/x")
    await other.aclose()


def test_key_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('store = "swift://images"\n[swift]\nauth_url = "http://h/auth/v1.0"\nuser = "u"\nkey = "from-file"\n')
    settings = load_settings(config, environ={"IMGPROXY_SWIFT_KEY": "from-env"})
    assert settings.extra["swift"] == {"auth_url": "http://h/auth/v1.0", "user": "u", "key": "from-env"}
    assert load_settings(config, environ={}).extra["swift"]["key"] == "from-file"


def test_its_s3_api_answers_with_the_advertised_details(swift_server: SwiftServer) -> None:
    # The same all-in-one is the S3 store's test server: check its S3 face with boto3 (in Swift's venv).
    s3 = swift_server.s3
    script = f"""
import boto3, botocore.config
c = boto3.client("s3", endpoint_url={s3.endpoint!r}, aws_access_key_id={s3.access_key!r},
                 aws_secret_access_key={s3.secret_key!r}, region_name={s3.region!r},
                 config=botocore.config.Config(s3={{"addressing_style": "path"}}, signature_version="s3v4"))
c.create_bucket(Bucket="s3check")
c.put_object(Bucket="s3check", Key="k", Body=b"0123456789")
print(c.get_object(Bucket="s3check", Key="k", Range="bytes=2-4")["Body"].read().decode())
"""
    done = subprocess.run([str(swift_server.venv / "bin" / "python"), "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "234"
    # ...and the bucket is a container of the same account.
    with swift_api(swift_server) as api:
        assert api.get("/s3check/k").content == b"0123456789"
