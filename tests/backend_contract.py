"""The store contract: every backend runs these tests against a real server of its kind.

Use it by subclassing and defining one fixture, ``store``, that yields a
:class:`StoreUnderTest` (sync or async fixture; it owns the server and stops it)::

    class TestFileRead(WriteBackendContract):
        @pytest.fixture
        def store(self, tmp_path) -> Iterator[StoreUnderTest]:
            ...

``ReadBackendContract`` covers :class:`backends.base.ReadBackend`; ``WriteBackendContract``
adds :class:`backends.base.WriteBackend` and includes the read tests. The class names do
not start with ``Test`` so pytest collects them only through subclasses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from backends.base import PIECE_SIZE, BackendError, BackendNotFound, ByteRange, ReadBackend, WriteBackend, read_into
from tests.helpers import payload

__all__ = ["StoreUnderTest", "ReadBackendContract", "WriteBackendContract", "payload"]


@dataclass
class StoreUnderTest:
    """What the contract needs to know about one backend under test.

    - ``backend``: the instance under test.
    - ``seed(name, data) -> location``: put an object into the store *without* the
      backend (straight into the directory / bucket / web root) and return the URL
      the backend reads it by.
    - ``location_of(name)``: the URL of an object that may not exist (yet).
    - ``leftovers()``: every object name in the store, temp objects included; used to
      check that abort and failed writes leave nothing behind. Only for writers.
    """

    backend: ReadBackend
    seed: Callable[[str, bytes], Awaitable[str]]
    location_of: Callable[[str], str]
    leftovers: Callable[[], Awaitable[set[str]]] | None = None
    notes: dict[str, object] = field(default_factory=dict)


async def collect(it: object) -> list[bytes]:
    return [bytes(piece) async for piece in it]  # type: ignore[attr-defined]


# A size that spans several pieces and ends mid-piece.
SIZE = 2 * PIECE_SIZE + 12345


class ReadBackendContract:
    """Tests every :class:`ReadBackend` must pass."""

    @pytest.fixture
    def store(self) -> StoreUnderTest:
        raise NotImplementedError("subclasses define the `store` fixture")

    async def test_read_whole(self, store: StoreUnderTest) -> None:
        data = payload(SIZE, 1)
        loc = await store.seed("whole", data)
        assert b"".join(await collect(store.backend.read(loc))) == data

    async def test_size(self, store: StoreUnderTest) -> None:
        loc = await store.seed("sized", payload(SIZE, 2))
        assert await store.backend.size(loc) == SIZE

    async def test_empty_object(self, store: StoreUnderTest) -> None:
        loc = await store.seed("empty", b"")
        assert await store.backend.size(loc) == 0
        assert b"".join(await collect(store.backend.read(loc))) == b""

    async def test_pieces_are_bounded(self, store: StoreUnderTest) -> None:
        loc = await store.seed("pieces", payload(SIZE, 3))
        pieces = await collect(store.backend.read(loc))
        assert all(0 < len(p) <= PIECE_SIZE for p in pieces)
        assert sum(map(len, pieces)) == SIZE

    @pytest.mark.parametrize(
        "start,end",
        [
            (0, 10),  # start
            (1000, 5000),  # middle, inside one piece
            (PIECE_SIZE - 7, PIECE_SIZE + 7),  # across a piece boundary
            (SIZE - 10, SIZE),  # end
            (0, SIZE),  # everything, as a range
            (17, 17),  # empty
            (SIZE, SIZE),  # empty, at the end
        ],
    )
    async def test_read_range(self, store: StoreUnderTest, start: int, end: int) -> None:
        data = payload(SIZE, 4)
        loc = await store.seed(f"range-{start}-{end}", data)
        pieces = await collect(store.backend.read(loc, ByteRange(start, end)))
        assert b"".join(pieces) == data[start:end]
        assert all(0 < len(p) <= PIECE_SIZE for p in pieces)

    @pytest.mark.parametrize("start,end", [(0, 10), (PIECE_SIZE - 7, PIECE_SIZE + 7), (17, SIZE), (SIZE, SIZE)])
    async def test_read_range_into_a_buffer(self, store: StoreUnderTest, start: int, end: int) -> None:
        # What a cold fill does: the range's bytes put into its buffer, front to back.
        data = payload(SIZE, 8)
        loc = await store.seed(f"into-{start}-{end}", data)
        buffer = bytearray(b"\xee" * (end - start + 3))
        counts = [n async for n in read_into(store.backend, loc, ByteRange(start, end),
                                             memoryview(buffer)[:end - start])]
        assert bytes(buffer) == data[start:end] + b"\xee" * 3  # nothing past the range written
        assert sum(counts) == end - start and all(0 < n <= PIECE_SIZE for n in counts)

    async def test_read_into_fails_as_read_does(self, store: StoreUnderTest) -> None:
        loc = await store.seed("into-past", payload(SIZE, 9))
        with pytest.raises(BackendError):
            [n async for n in read_into(store.backend, loc, ByteRange(SIZE - 5, SIZE + 5), memoryview(bytearray(10)))]
        with pytest.raises(BackendNotFound):
            [n async for n in read_into(store.backend, store.location_of("not-there"), ByteRange(0, 10),
                                        memoryview(bytearray(10)))]
        # Closed after its first piece, the read lets go of its connection: the store keeps working.
        it = read_into(store.backend, loc, ByteRange(0, SIZE), memoryview(bytearray(SIZE)))
        assert await anext(it) > 0
        await it.aclose()  # type: ignore[attr-defined]
        buffer = bytearray(SIZE)
        assert sum([n async for n in read_into(store.backend, loc, ByteRange(0, SIZE), memoryview(buffer))]) == SIZE
        assert bytes(buffer) == payload(SIZE, 9)

    @pytest.mark.parametrize("start,end", [(SIZE - 5, SIZE + 5), (SIZE + 1, SIZE + 100)])
    async def test_range_past_end_raises(self, store: StoreUnderTest, start: int, end: int) -> None:
        loc = await store.seed(f"past-{start}", payload(SIZE, 5))
        with pytest.raises(BackendError):
            await collect(store.backend.read(loc, ByteRange(start, end)))

    async def test_missing_object(self, store: StoreUnderTest) -> None:
        loc = store.location_of("does-not-exist")
        with pytest.raises(BackendNotFound):
            await store.backend.size(loc)
        with pytest.raises(BackendNotFound):
            await collect(store.backend.read(loc))
        with pytest.raises(BackendNotFound):
            await collect(store.backend.read(loc, ByteRange(0, 1)))

    async def test_early_close(self, store: StoreUnderTest) -> None:
        """Stopping after one piece releases the stream; the store keeps working."""
        data = payload(SIZE, 6)
        loc = await store.seed("early", data)
        for _ in range(3):
            it = store.backend.read(loc)
            first = await it.__anext__()
            assert data.startswith(first)
            await it.aclose()  # type: ignore[attr-defined]
        assert b"".join(await collect(store.backend.read(loc))) == data

    async def test_concurrent_reads(self, store: StoreUnderTest) -> None:
        data = payload(SIZE, 7)
        loc = await store.seed("concurrent", data)
        results = await asyncio.gather(*(collect(store.backend.read(loc)) for _ in range(4)))
        assert all(b"".join(r) == data for r in results)


class WriteBackendContract(ReadBackendContract):
    """Tests every :class:`WriteBackend` must pass, plus the read tests."""

    @staticmethod
    def _writer_backend(store: StoreUnderTest) -> WriteBackend:
        assert isinstance(store.backend, WriteBackend)
        return store.backend

    async def _leftovers(self, store: StoreUnderTest) -> set[str]:
        assert store.leftovers is not None, "writer contract needs `leftovers`"
        return await store.leftovers()

    async def test_commit_makes_visible(self, store: StoreUnderTest) -> None:
        backend = self._writer_backend(store)
        data = payload(SIZE, 10)
        writer = await backend.open_writer("img-commit")
        for i in range(0, SIZE, 300_000):
            await writer.write(data[i : i + 300_000])
        loc = await writer.commit()
        assert loc == store.location_of("img-commit")
        assert await backend.size(loc) == SIZE
        assert b"".join(await collect(backend.read(loc))) == data

    async def test_nothing_visible_before_commit(self, store: StoreUnderTest) -> None:
        backend = self._writer_backend(store)
        writer = await backend.open_writer("img-pending")
        await writer.write(payload(1000, 11))
        with pytest.raises(BackendNotFound):
            await backend.size(store.location_of("img-pending"))
        with pytest.raises(BackendNotFound):
            await collect(backend.read(store.location_of("img-pending")))
        await writer.abort()

    async def test_abort_leaves_nothing(self, store: StoreUnderTest) -> None:
        backend = self._writer_backend(store)
        before = await self._leftovers(store)
        writer = await backend.open_writer("img-abort")
        await writer.write(payload(PIECE_SIZE + 1, 12))
        await writer.abort()
        await writer.abort()  # twice is fine
        assert await self._leftovers(store) == before
        with pytest.raises(BackendNotFound):
            await backend.size(store.location_of("img-abort"))

    async def test_abort_after_commit_keeps_object(self, store: StoreUnderTest) -> None:
        backend = self._writer_backend(store)
        writer = await backend.open_writer("img-keep")
        await writer.write(b"kept")
        loc = await writer.commit()
        await writer.abort()
        assert b"".join(await collect(backend.read(loc))) == b"kept"

    async def test_empty_commit(self, store: StoreUnderTest) -> None:
        backend = self._writer_backend(store)
        writer = await backend.open_writer("img-empty")
        loc = await writer.commit()
        assert await backend.size(loc) == 0

    async def test_recommit_replaces(self, store: StoreUnderTest) -> None:
        """A retried upload of the same image replaces what an earlier attempt left."""
        backend = self._writer_backend(store)
        for content in (b"first attempt", b"second"):
            writer = await backend.open_writer("img-again")
            await writer.write(content)
            loc = await writer.commit()
        assert b"".join(await collect(backend.read(loc))) == b"second"

    async def test_delete(self, store: StoreUnderTest) -> None:
        backend = self._writer_backend(store)
        before = await self._leftovers(store)
        writer = await backend.open_writer("img-delete")
        await writer.write(b"x" * 100)
        loc = await writer.commit()
        await backend.delete(loc)
        with pytest.raises(BackendNotFound):
            await backend.size(loc)
        assert await self._leftovers(store) == before

    async def test_delete_missing_is_ok(self, store: StoreUnderTest) -> None:
        backend = self._writer_backend(store)
        await backend.delete(store.location_of("never-written"))

    async def test_concurrent_writers(self, store: StoreUnderTest) -> None:
        backend = self._writer_backend(store)
        blobs = {f"img-conc-{i}": payload(300_000 + i, 20 + i) for i in range(4)}
        writers = {name: await backend.open_writer(name) for name in blobs}

        async def feed(name: str) -> str:
            data = blobs[name]
            for i in range(0, len(data), 65536):
                await writers[name].write(data[i : i + 65536])
                await asyncio.sleep(0)  # interleave the writers
            return await writers[name].commit()

        locations = await asyncio.gather(*(feed(n) for n in blobs))
        for name, loc in zip(blobs, locations):
            assert b"".join(await collect(backend.read(loc))) == blobs[name]
