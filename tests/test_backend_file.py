"""The file store: the store contract, plus what is particular to files on disk."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from backends import Backends, StoreConfig
from backends.base import BackendError, ByteRange
from backends.file import TEMP_PREFIX, FileBackend
from tests.backend_contract import StoreUnderTest, WriteBackendContract, collect, payload


def _store_for(root: Path) -> StoreUnderTest:
    backend = FileBackend.from_url(root.as_uri(), {})

    async def seed(name: str, data: bytes) -> str:
        (root / name).write_bytes(data)
        return backend.location_for(name)

    async def leftovers() -> set[str]:
        return set(os.listdir(root))

    return StoreUnderTest(backend=backend, seed=seed, location_of=backend.location_for, leftovers=leftovers)


class TestFileBackendContract(WriteBackendContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> StoreUnderTest:
        return _store_for(tmp_path / "images")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "images"


@pytest.fixture
def backend(root: Path) -> FileBackend:
    return FileBackend.from_url(root.as_uri(), {})


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_from_url_creates_dir_and_names_objects(root: Path) -> None:
    backend = FileBackend.from_url(root.as_uri(), {})
    assert root.is_dir()
    assert backend.location_for("abc") == f"file://{root}/abc"


def test_from_url_refuses_relative_and_foreign_urls() -> None:
    with pytest.raises(BackendError):
        FileBackend.from_url("file:relative/dir", {})
    with pytest.raises(BackendError):
        FileBackend.from_url("file://otherhost/abs/dir", {})


def test_backends_registry_picks_file(root: Path) -> None:
    backends = Backends([StoreConfig("file", root.as_uri())], "file")
    assert isinstance(backends.default, FileBackend)
    assert backends.writable() is backends.default
    assert backends.store_of(backends.default.location_for("x")) == "file"


@pytest.mark.parametrize(
    "location",
    [
        "file:///etc/passwd",
        "file:///{root}/../outside",
        "file:///{root}/sub/nested",
        "file:///{root}/.tmp-x-123",
        "http://example.com/{root}/x",
    ],
)
async def test_locations_outside_the_store_are_refused(
    backend: FileBackend, root: Path, location: str
) -> None:
    (root.parent / "outside").write_bytes(b"secret")
    location = location.format(root=str(root).lstrip("/"))
    with pytest.raises(BackendError) as info:
        await collect(backend.read(location))
    assert type(info.value) is BackendError  # refused, not looked up
    with pytest.raises(BackendError):
        await backend.size(location)
    with pytest.raises(BackendError):
        await backend.delete(location)
    assert (root.parent / "outside").read_bytes() == b"secret"


async def test_invalid_object_names_are_refused(backend: FileBackend) -> None:
    for name in ("", ".hidden", "a/b"):
        with pytest.raises(BackendError):
            await backend.open_writer(name)


async def test_writer_uses_temp_file_in_store_dir(backend: FileBackend, root: Path) -> None:
    writer = await backend.open_writer("img1")
    await writer.write(b"abc")
    names = os.listdir(root)
    assert len(names) == 1 and names[0].startswith(f"{TEMP_PREFIX}img1-")
    await writer.commit()
    assert os.listdir(root) == ["img1"]
    assert (root / "img1").read_bytes() == b"abc"


async def test_early_close_releases_file_descriptor(backend: FileBackend, root: Path) -> None:
    (root / "big").write_bytes(payload(3 * 1024 * 1024))
    before = _open_fds()
    for _ in range(5):
        it = backend.read(backend.location_for("big"))
        await it.__anext__()
        await it.aclose()
    assert _open_fds() == before


async def test_file_shrinking_mid_read_raises(backend: FileBackend, root: Path) -> None:
    path = root / "shrinks"
    path.write_bytes(payload(3 * 1024 * 1024))
    it = backend.read(backend.location_for("shrinks"), ByteRange(0, 3 * 1024 * 1024))
    await it.__anext__()
    os.truncate(path, 1024 * 1024 + 10)
    with pytest.raises(BackendError):
        async for _ in it:
            pass


def test_sweep_temp_removes_only_old_temp_files(backend: FileBackend, root: Path) -> None:
    old = root / f"{TEMP_PREFIX}a-1"
    young = root / f"{TEMP_PREFIX}b-2"
    image = root / "image"
    for p in (old, young, image):
        p.write_bytes(b"x")
    long_ago = time.time() - 7200
    os.utime(old, (long_ago, long_ago))
    os.utime(image, (long_ago, long_ago))
    assert backend.sweep_temp(3600) == 1
    assert sorted(os.listdir(root)) == sorted([young.name, image.name])


@pytest.mark.parametrize("sizes", [[0], [1], [4095, 1, 4097], [4 * 1024 * 1024 + 3, 3 * 1024 * 1024, 5], [9 * 1024 * 1024]])
async def test_writer_stores_exactly_the_bytes_of_any_piece_sizes(backend: FileBackend, sizes: list[int]) -> None:
    # Uploads are written with O_DIRECT through an aligned buffer: odd sizes and tails must survive.
    pieces = [os.urandom(n) for n in sizes]
    writer = await backend.open_writer("odd")
    for i, piece in enumerate(pieces):
        await writer.write(memoryview(piece) if i % 2 else piece)
    location = await writer.commit()
    assert backend.path_for(location).read_bytes() == b"".join(pieces)
    assert [p.name for p in backend.root.iterdir()] == ["odd"]


async def test_buffered_writes_when_direct_io_is_off(tmp_path: Path) -> None:
    # `[file] direct_io = false` (and a filesystem that refuses O_DIRECT) take the buffered path.
    backend = FileBackend.from_url((tmp_path / "store").as_uri(), {"direct_io": False})
    pieces = [os.urandom(n) for n in (4095, 1, 4 * 1024 * 1024 + 3)]
    writer = await backend.open_writer("buffered")
    for piece in pieces:
        await writer.write(piece)
    location = await writer.commit()
    assert backend.path_for(location).read_bytes() == b"".join(pieces)
    assert [p.name for p in backend.root.iterdir()] == ["buffered"]


def test_direct_io_option_must_be_a_boolean(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="direct_io"):
        FileBackend.from_url(tmp_path.as_uri(), {"direct_io": "sometimes"})


async def test_writes_in_flight_land_in_call_order(backend: FileBackend) -> None:
    # Uploads keep several writes in flight (writes_in_flight), from page-aligned buffers
    # (written as they are, no staging copy) and bytes mixed: the file holds them in call order.
    import asyncio
    import mmap

    sizes = [4 * 1024 * 1024, 4 * 1024 * 1024, 4095, 4 * 1024 * 1024, 8192, 3]
    pieces = []
    for i, n in enumerate(sizes):
        data = os.urandom(n)
        if i % 2 == 0:
            buffer = mmap.mmap(-1, n)
            buffer[:] = data
            pieces.append((memoryview(buffer), data))
        else:
            pieces.append((data, data))
    writer = await backend.open_writer("ordered")
    assert writer.writes_in_flight > 1
    depth = writer.writes_in_flight
    for start in range(0, len(pieces), depth):
        await asyncio.gather(*(writer.write(view) for view, _ in pieces[start:start + depth]))
    location = await writer.commit()
    assert backend.path_for(location).read_bytes() == b"".join(data for _, data in pieces)


async def test_a_write_error_reaches_every_write_in_flight(backend: FileBackend, root: Path) -> None:
    # With several writes in flight, an I/O error fails each caller with a store error (none
    # hangs, none reports success), and abort leaves nothing.
    import asyncio
    import mmap

    writer = await backend.open_writer("broken")
    pieces = [memoryview(mmap.mmap(-1, 4096)) for _ in range(4)]  # aligned: each is its own write
    await writer.write(pieces.pop())
    read_only = os.open(os.devnull, os.O_RDONLY)
    os.dup2(read_only, writer._fd)  # type: ignore[arg-type]  # the disk going away, as the writer sees it
    os.close(read_only)
    results = await asyncio.gather(*(writer.write(piece) for piece in pieces), return_exceptions=True)
    assert all(isinstance(r, BackendError) for r in results), results
    await writer.abort()
    assert not [n for n in os.listdir(root) if "broken" in n]
