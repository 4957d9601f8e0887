"""Single-flight fills in one process: herds, early leavers, upstream failures and stalls."""

from __future__ import annotations

import asyncio

import pytest

from backends.base import ByteRange
from cache import CacheError, UpstreamFailed
from tests.cache.helpers import CHUNK, ScriptedStore, image_bytes, sha512


async def test_cold_herd_reads_each_byte_upstream_once_and_streams_early(make_cache, add_image, file_store):
    cache = make_cache()
    data = image_bytes(6 * CHUNK + 999, seed=21)
    manifest, location = await add_image(cache, "img", data, cached=False)
    upstream = ScriptedStore(file_store, piece=8 * 1024, delay=0.002)
    loop = asyncio.get_running_loop()
    first_piece: list[float] = []

    async def reader() -> str:
        out = bytearray()
        async for piece in cache.read("img", manifest, ByteRange(0, len(data)), upstream, location):
            if not out:
                first_piece.append(loop.time())
            out += piece
        return sha512(bytes(out))

    digests = await asyncio.gather(*(reader() for _ in range(16)))
    assert digests == [sha512(data)] * 16
    assert upstream.bytes_read == len(data)
    spans = sorted((r.start, r.end) for r in upstream.requests)
    assert spans == [(i * CHUNK, min((i + 1) * CHUNK, len(data))) for i in range(7)]
    # Every reader had bytes before the upstream delivered its last piece.
    assert len(first_piece) == 16 and max(first_piece) < upstream.last_piece_at
    stats = await cache.stats_async()
    assert stats["coalesced_waiters"] >= 15
    await cache.wait_idle()
    assert (await cache.stats_async())["chunks"] == 7


async def test_reader_that_leaves_does_not_stop_the_fill(make_cache, add_image, file_store):
    cache = make_cache()
    data = image_bytes(4 * CHUNK, seed=22)
    manifest, location = await add_image(cache, "img", data, cached=False)
    upstream = ScriptedStore(file_store, piece=8 * 1024, delay=0.002)
    quitter = cache.read("img", manifest, ByteRange(0, len(data)), upstream, location)
    await anext(quitter)
    stayer_task = asyncio.ensure_future(
        _collect(cache.read("img", manifest, ByteRange(0, len(data)), upstream, location)))
    await asyncio.sleep(0.005)
    await quitter.aclose()
    assert await stayer_task == data
    assert upstream.bytes_read == len(data)


@pytest.mark.parametrize("readahead", [0, 1, 3])
async def test_a_reader_that_leaves_keeps_its_chunk_filling_and_drops_its_read_ahead(make_cache, add_image,
                                                                                     file_store, readahead):
    # The chunk being read is filled and stored although the reader left after one piece
    # (a pull-through cache keeps filling); the read-ahead nobody else waits for is dropped.
    cache = make_cache(readahead_chunks=readahead)
    data = image_bytes(6 * CHUNK, seed=23)
    manifest, location = await add_image(cache, "img", data, cached=False)
    gate = asyncio.Event()  # holds the read-ahead reads open until the reader has left
    upstream = ScriptedStore(file_store, piece=8 * 1024, delay=0.002, gate=gate, gate_from=CHUNK)
    it = cache.read("img", manifest, ByteRange(0, len(data)), upstream, location)
    await anext(it)
    assert len(upstream.requests) == readahead + 1  # the read-ahead was running
    await it.aclose()
    gate.set()
    await cache.wait_idle()
    stored = [i for i, address in enumerate(manifest.chunks) if cache.store.exists(address)]
    assert stored == [0]
    assert upstream.bytes_read == CHUNK
    await cache.flush()
    assert cache.pending.pending_bytes() == 0  # dropped fills gave back the room they reserved
    assert cache.admission.fills == 0 and cache.admission.bytes == 0
    assert await _collect(cache.read("img", manifest, ByteRange(0, CHUNK), upstream, location)) == data[:CHUNK]
    assert upstream.bytes_read == CHUNK


async def _collect(it) -> bytes:  # type: ignore[no-untyped-def]
    return b"".join([bytes(p) async for p in it])


async def test_upstream_failure_mid_fill_resumes_with_a_ranged_read(make_cache, add_image, file_store):
    cache = make_cache()
    data = image_bytes(3 * CHUNK, seed=24)
    manifest, location = await add_image(cache, "img", data, cached=False)
    upstream = ScriptedStore(file_store, fail_at=CHUNK + 20_000, failures=1)
    assert await _collect(cache.read("img", manifest, ByteRange(0, len(data)), upstream, location)) == data
    assert upstream.bytes_read == len(data)  # resumed, not restarted
    resumed = [r for r in upstream.requests if r.start % CHUNK]
    assert len(resumed) == 1 and CHUNK < resumed[0].start <= CHUNK + 20_000
    await cache.wait_idle()
    assert (await cache.stats_async())["upstream_retries"] == 1


async def test_upstream_failing_past_retries_raises_for_every_reader(make_cache, add_image, file_store):
    cache = make_cache(upstream_retries=2)
    data = image_bytes(3 * CHUNK, seed=25)
    manifest, location = await add_image(cache, "img", data, cached=False)
    upstream = ScriptedStore(file_store, fail_at=CHUNK + 100, failures=10)
    received = [0, 0]

    async def reader(i: int) -> None:
        async for piece in cache.read("img", manifest, ByteRange(0, len(data)), upstream, location):
            received[i] += len(piece)

    results = await asyncio.gather(reader(0), reader(1), return_exceptions=True)
    assert all(isinstance(r, UpstreamFailed) for r in results)
    assert all(n < len(data) for n in received)
    # the first try and its two retries, all from where chunk 1 stopped
    assert len([r for r in upstream.requests if r.start >= CHUNK and r.start < 2 * CHUNK]) == 3
    await cache.wait_idle()
    assert not cache.store.exists(manifest.chunks[1])


async def test_stalled_upstream_is_retried(make_cache, add_image, file_store):
    cache = make_cache(stall_timeout=0.2)
    data = image_bytes(2 * CHUNK, seed=26)
    manifest, location = await add_image(cache, "img", data, cached=False)
    upstream = ScriptedStore(file_store, stall_at=30_000, stall=3.0)
    assert await _collect(cache.read("img", manifest, ByteRange(0, len(data)), upstream, location)) == data


async def test_range_past_the_end_is_refused(make_cache, add_image, file_store):
    cache = make_cache()
    data = image_bytes(CHUNK, seed=27)
    manifest, location = await add_image(cache, "img", data)
    with pytest.raises(ValueError):
        await _collect(cache.read("img", manifest, ByteRange(0, len(data) + 1), ScriptedStore(file_store), location))


async def test_closing_the_cache_fails_waiting_readers(make_cache, add_image, file_store):
    cache = make_cache()
    data = image_bytes(2 * CHUNK, seed=28)
    manifest, location = await add_image(cache, "img", data, cached=False)
    upstream = ScriptedStore(file_store, piece=4096, delay=0.05)
    it = cache.read("img", manifest, ByteRange(0, len(data)), upstream, location)
    await anext(it)
    await cache.aclose()
    with pytest.raises(CacheError):
        async for _ in it:
            pass


async def test_fill_buffers_are_reused_only_once_no_reader_holds_a_view(make_cache, add_image, file_store):
    # Cold pieces are views of the fill's buffer, and buffers are recycled for later fills
    # (fresh pages cost the kernel a fault each): a piece a reader still holds must keep its bytes.
    cache = make_cache()
    images = {name: image_bytes(3 * CHUNK, seed=seed) for name, seed in (("a", 31), ("b", 32), ("c", 33))}
    added = {name: await add_image(cache, name, data, cached=False) for name, data in images.items()}
    upstream = ScriptedStore(file_store, piece=16 * 1024)

    async def cold(name: str) -> list[bytes | memoryview]:
        manifest, location = added[name]
        pieces = [piece async for piece in cache.read(name, manifest, ByteRange(0, manifest.size), upstream, location)]
        await cache.wait_idle()
        return pieces

    held = await cold("a")
    assert b"".join(held) == images["a"] and any(isinstance(p, memoryview) for p in held)
    assert b"".join(await cold("b")) == images["b"]
    assert b"".join(held) == images["a"]  # b's fills did not write into a's buffers
    reused = cache.admission.buffers.reused
    del held
    assert b"".join(await cold("c")) == images["c"]
    assert cache.admission.buffers.reused > reused  # a's buffers, let go, served c
