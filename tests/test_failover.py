"""FailoverBackend over two real file stores: reads go on from the next copy where one fails."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backends import BackendNotFound, BackendUnavailable, ByteRange, FailoverBackend
from backends.file import FileBackend
from tests.backend_contract import payload

DATA = payload(3 * 1024 * 1024 + 5, 80)  # several pieces
IMAGE = "0d7c4bde-2f7e-4d7c-9a57-3d2b2f0f1c11"


def stores(tmp_path: Path) -> tuple[FileBackend, FileBackend]:
    return (FileBackend.from_url((tmp_path / "a").as_uri(), {}), FileBackend.from_url((tmp_path / "b").as_uri(), {}))


def failover(a: FileBackend, b: FileBackend) -> FailoverBackend:
    return FailoverBackend([("a", a, a.location_for(IMAGE)), ("b", b, b.location_for(IMAGE))])


async def read(backend: FailoverBackend, byte_range: ByteRange | None = None) -> bytes:
    return b"".join([bytes(p) async for p in backend.read(backend.copies[0][2], byte_range)])


async def test_missing_first_copy_reads_the_second(tmp_path: Path) -> None:
    a, b = stores(tmp_path)
    (b.root / IMAGE).write_bytes(DATA)
    both = failover(a, b)
    assert await both.size(a.location_for(IMAGE)) == len(DATA)
    assert await read(both) == DATA
    assert await read(both, ByteRange(100, 2_000_000)) == DATA[100:2_000_000]


class CutAfterOnePiece:
    """Fault injection no real store can be told to do: a file store whose reads fail after
    their first piece (a connection cut mid-body)."""

    def __init__(self, store: FileBackend) -> None:
        self.store = store

    async def size(self, location: str) -> int:
        return await self.store.size(location)

    async def read(self, location: str, byte_range: ByteRange | None = None) -> AsyncIterator[bytes]:
        async for piece in self.store.read(location, byte_range):
            yield piece
            raise BackendUnavailable("connection cut", location=location)

    async def aclose(self) -> None:
        await self.store.aclose()


async def test_copy_cut_mid_read_goes_on_from_the_next(tmp_path: Path) -> None:
    a, b = stores(tmp_path)
    (a.root / IMAGE).write_bytes(DATA)
    (b.root / IMAGE).write_bytes(DATA)
    for wanted in (None, ByteRange(10, len(DATA) - 10)):
        both = FailoverBackend([("a", CutAfterOnePiece(a), a.location_for(IMAGE)), ("b", b, b.location_for(IMAGE))])
        expected = DATA if wanted is None else DATA[10:-10]
        assert await read(both, wanted) == expected


async def test_no_copy_left_is_not_found(tmp_path: Path) -> None:
    a, b = stores(tmp_path)
    with pytest.raises(BackendNotFound, match="store a: .*store b: "):
        await read(failover(a, b))
