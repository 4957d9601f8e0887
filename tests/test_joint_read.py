"""Two neighbouring chunks' fills share one store read (cache/joint_read.py).

The unit tests drive a :class:`JointRead` over a real file store (counting the reads it
opens and the reads it closes); the last test reads a cold image through the service from
a real nginx and counts its requests and bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from backends.base import PIECE_SIZE, ByteRange, ReadBackend, read_chunks, read_into
from backends.file import FileBackend
from cache.joint_read import JointRead
from tests.nginx_fixtures import NginxStore, nginx_store_factory  # noqa: F401 - fixture
from tests.server import ServerProcess
from tests.test_herd import wait_cached_then_evict
from tests.test_locations import CHUNK, add_location, body_bytes, digests, new_image

LEAD = ByteRange(0, PIECE_SIZE + PIECE_SIZE // 2)  # the boundary falls inside a store piece
FOLLOW = ByteRange(LEAD.end, 3 * PIECE_SIZE + 7)


class CountingStore(FileBackend):
    """The file store, recording each read it opens (its range) and each it finished or closed."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.opened: list[ByteRange | None] = []
        self.closed = 0

    async def read(self, location: str, byte_range: ByteRange | None = None) -> AsyncIterator[bytes]:
        self.opened.append(byte_range)
        try:
            async for piece in super().read(location, byte_range):
                yield piece
        finally:
            self.closed += 1


@pytest.fixture
def store(tmp_path: Path) -> tuple[CountingStore, str, bytes]:
    data = os.urandom(FOLLOW.end)
    name = str(uuid.uuid4())
    (tmp_path / name).write_bytes(data)
    return CountingStore(tmp_path), f"file://{tmp_path}/{name}", data


def joint(store: CountingStore, location: str) -> tuple[JointRead, set[asyncio.Task[None]]]:
    spawned: set[asyncio.Task[None]] = set()

    def spawn(coro: object) -> None:
        spawned.add(asyncio.ensure_future(coro))  # type: ignore[arg-type]
    return JointRead(store, location, [LEAD, FOLLOW], spawn), spawned


async def take(view: ReadBackend, location: str, byte_range: ByteRange, limit: int | None = None) -> bytes:
    """What a fill does with its source: the range put into its buffer (stopping once ``limit`` bytes are in)."""
    buffer = bytearray(byte_range.length)
    got = 0
    counts = read_into(view, location, byte_range, memoryview(buffer))
    try:
        async for count in counts:
            got += count
            if limit is not None and got >= limit:
                break
    finally:
        await counts.aclose()  # type: ignore[attr-defined]
    return bytes(buffer[:got])


async def settle(spawned: set[asyncio.Task[None]]) -> None:
    await asyncio.sleep(0)
    if spawned:
        await asyncio.wait(spawned)


async def test_lead_then_follower_read_their_bytes_through_one_store_read(store: tuple[CountingStore, str, bytes]) -> None:
    backend, location, data = store
    j, _ = joint(backend, location)
    lead, follow = await asyncio.gather(take(j.views[0], location, LEAD), take(j.views[1], location, FOLLOW))
    assert lead == data[:LEAD.end] and follow == data[FOLLOW.start:]
    assert backend.opened == [ByteRange(LEAD.start, FOLLOW.end)] and backend.closed == 1
    assert j.handovers == 1


async def test_a_follower_that_asks_first_waits_for_the_boundary(store: tuple[CountingStore, str, bytes]) -> None:
    backend, location, data = store
    j, _ = joint(backend, location)
    follower = asyncio.ensure_future(take(j.views[1], location, FOLLOW))
    await asyncio.sleep(0.05)
    assert not follower.done() and backend.opened == []  # nothing read while the lead has not started
    assert await take(j.views[0], location, LEAD) == data[:LEAD.end]
    assert await follower == data[FOLLOW.start:]
    assert len(backend.opened) == 1


async def test_a_lead_that_never_reads_lets_the_follower_read_alone(store: tuple[CountingStore, str, bytes]) -> None:
    backend, location, data = store
    j, _ = joint(backend, location)
    follower = asyncio.ensure_future(take(j.views[1], location, FOLLOW))
    await asyncio.sleep(0.01)
    j.ended(0)  # e.g. its chunk turned up on disk
    assert await follower == data[FOLLOW.start:]
    assert backend.opened == [FOLLOW] and j.handovers == 0


async def test_a_lead_stopped_before_the_boundary_sends_the_follower_to_its_own_read(
        store: tuple[CountingStore, str, bytes]) -> None:
    backend, location, data = store
    j, spawned = joint(backend, location)
    follower = asyncio.ensure_future(take(j.views[1], location, FOLLOW))
    assert await take(j.views[0], location, LEAD, limit=1) == data[:PIECE_SIZE]  # then it gives up
    assert await follower == data[FOLLOW.start:]
    await settle(spawned)
    assert backend.opened == [ByteRange(LEAD.start, FOLLOW.end), FOLLOW]
    assert backend.closed == 2  # the abandoned joint read was closed, not left holding a connection


async def test_a_follower_gone_before_the_boundary_has_the_rest_closed(store: tuple[CountingStore, str, bytes]) -> None:
    backend, location, data = store
    j, spawned = joint(backend, location)
    j.ended(1)
    assert await take(j.views[0], location, LEAD) == data[:LEAD.end]
    await settle(spawned)
    assert backend.closed == 1 and j.handovers == 0


async def test_a_retry_from_the_middle_reads_privately(store: tuple[CountingStore, str, bytes]) -> None:
    backend, location, data = store
    j, _ = joint(backend, location)
    lead = await take(j.views[0], location, LEAD)
    middle = ByteRange(FOLLOW.start + 100, FOLLOW.end)  # a follower that already had 100 bytes
    assert await take(j.views[1], location, middle) == data[middle.start:]
    assert lead == data[:LEAD.end] and backend.opened[-1] == middle
    again = await take(j.views[0], location, LEAD)  # a second read of the lead's range: its own
    assert again == data[:LEAD.end] and backend.opened[-1] == LEAD


async def test_small_sections_are_cut_out_of_one_store_piece_and_handed_down_a_run(
        store: tuple[CountingStore, str, bytes]) -> None:
    backend, location, data = store
    sections = [ByteRange(i * 1000, (i + 1) * 1000) for i in range(4)]  # four sections in one 1 MiB piece
    spawned: set[asyncio.Task[None]] = set()
    j = JointRead(backend, location, sections, lambda coro: spawned.add(asyncio.ensure_future(coro)))
    got = await asyncio.gather(*(take(j.views[i], location, r) for i, r in reversed(list(enumerate(sections)))))
    assert got == [data[r.start:r.end] for r in reversed(sections)]
    assert backend.opened == [ByteRange(0, 4000)] and j.handovers == 3


async def test_a_gone_middle_section_sends_the_later_ones_to_their_own_reads(
        store: tuple[CountingStore, str, bytes]) -> None:
    backend, location, data = store
    sections = [ByteRange(0, 5000), ByteRange(5000, 9000), ByteRange(9000, 12000)]
    spawned: set[asyncio.Task[None]] = set()
    j = JointRead(backend, location, sections, lambda coro: spawned.add(asyncio.ensure_future(coro)))
    last = asyncio.ensure_future(take(j.views[2], location, sections[2]))
    j.ended(1)  # its chunk was found on disk: it will never take the read
    assert await take(j.views[0], location, sections[0]) == data[:5000]
    assert await last == data[9000:12000]
    await settle(spawned)
    assert backend.opened == [ByteRange(0, 12000), sections[2]] and backend.closed == 2


def test_a_cold_sequential_read_asks_the_store_for_two_chunks_at_a_time(
        server_factory: Callable[..., ServerProcess], nginx_store_factory: Callable[..., NginxStore]) -> None:
    chunks = 16
    data = os.urandom(chunks * CHUNK - 99)
    nginx = nginx_store_factory()
    url = nginx.put("joint.img", data)
    server = server_factory(config={"chunk_size": CHUNK, "fill_read_chunks": 2})  # an http store's own is 1
    with httpx.Client(base_url=server.url, headers={"X-Auth-Token": server.admin_token}, timeout=30) as admin:
        image_id = new_image(admin, name="joint")
        assert add_location(admin, image_id, url, digests(data)).status_code == 202
        wait_cached_then_evict(admin, image_id, len(data))
        seen, before = len(nginx.log_lines()), body_bytes(nginx)
        got = admin.get(f"/v2/images/{image_id}/file")
        assert got.status_code == 200 and hashlib.sha512(got.content).digest() == hashlib.sha512(data).digest()
    gets = [line for line in nginx.wait_for_log(seen + 1)[seen:] if line.startswith("GET ")]
    assert body_bytes(nginx) - before == len(data)  # each byte read from the store once
    # The first chunk alone (the reader waits for it), then read-ahead in pairs: 16 chunks in 9 reads.
    assert 1 < len(gets) <= 1 + chunks // 2, gets
    assert all("bytes=" in line for line in gets)  # still ranged reads, as many in flight as before


def test_each_store_kind_says_how_many_chunks_a_read_takes_through_its_wrappers(tmp_path: Path) -> None:
    from backends.failover import FailoverBackend
    from backends.http import HttpBackend
    from backends.s3 import S3Backend
    from backends.swift import SwiftBackend
    from imgproxy.ops.metrics import Metrics
    from imgproxy.ops.store_meter import MeteredStore

    assert (read_chunks(FileBackend(tmp_path)), S3Backend.read_chunks, SwiftBackend.read_chunks) == (1, 4, 4)
    assert read_chunks(HttpBackend.__new__(HttpBackend)) == 1  # per-connection limits: keep parallel requests
    swift = SwiftBackend.__new__(SwiftBackend)
    metered = MeteredStore(FailoverBackend([("a", swift, "x")]), "a", Metrics())
    assert read_chunks(metered) == 4
    both = FailoverBackend([("a", swift, "x"), ("b", FileBackend(tmp_path), "y")])
    assert read_chunks(both) == 1  # the most careful of the copies
