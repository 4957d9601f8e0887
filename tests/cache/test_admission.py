"""Admission control: fills and their buffers are bounded, whatever clients ask for."""

from __future__ import annotations

import asyncio

from backends.base import ByteRange
from tests.cache.helpers import CHUNK, KiB, ScriptedStore, image_bytes, sha512


async def _wait_for(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(20):
        while not predicate():
            await asyncio.sleep(0.002)


async def test_many_one_byte_reads_of_cold_chunks_then_a_disconnect_stay_bounded(make_cache, add_image, file_store):
    cache = make_cache(max_fills=4, fill_memory=4 * CHUNK)
    n = 48
    data = image_bytes(n * CHUNK, seed=400)
    manifest, location = await add_image(cache, "img", data, cached=False)
    gate = asyncio.Event()  # the store holds every read open until the clients are gone
    upstream = ScriptedStore(file_store, piece=8 * KiB, gate=gate)
    readers = [cache.read("img", manifest, ByteRange(i * CHUNK + 7, i * CHUNK + 8), upstream, location)
               for i in range(n)]
    firsts = [asyncio.ensure_future(anext(r)) for r in readers]
    await _wait_for(lambda: upstream.active >= 4, "four fills reading")
    await asyncio.sleep(0.1)  # room for more fills to start, were they allowed to
    assert upstream.active == 4 and len(upstream.requests) == 4
    stats = await cache.stats_async()
    assert stats["active_fills"] == 4 and stats["waiting_fills"] == n - 4
    assert stats["fill_bytes"] == 4 * CHUNK
    # Every client disconnects.
    for f in firsts:
        f.cancel()
    await asyncio.gather(*firsts, return_exceptions=True)
    for r in readers:
        await r.aclose()
    assert (await cache.stats_async())["waiting_fills"] == 0
    gate.set()
    await cache.wait_idle()
    # The four demanded fills finished (the next client finds them cached); nothing else ran.
    assert upstream.bytes_read == 4 * CHUNK and upstream.peak_active == 4
    assert cache.admission.peak_fills == 4 and cache.admission.peak_bytes == 4 * CHUNK
    stats = await cache.stats_async()
    assert stats["chunks"] == 4 and stats["fill_bytes"] == 0 and stats["active_fills"] == 0


async def test_read_ahead_never_waits_for_admission(make_cache, add_image, file_store):
    cache = make_cache(max_fills=1, fill_memory=CHUNK, readahead_chunks=3)
    data = image_bytes(5 * CHUNK + 3, seed=401)
    manifest, location = await add_image(cache, "img", data, cached=False)
    upstream = ScriptedStore(file_store, piece=8 * KiB, delay=0.001)
    got = b"".join([bytes(p) async for p in cache.read("img", manifest, ByteRange(0, len(data)), upstream, location)])
    assert sha512(got) == sha512(data)
    assert upstream.peak_active == 1 and upstream.bytes_read == len(data)
    await cache.wait_idle()
    assert (await cache.stats_async())["chunks"] == 6


async def test_demand_waits_for_admission_and_every_reader_gets_its_bytes(make_cache, add_image, file_store):
    # 12 readers of 3 images, 2 fills at a time: they queue for grants, and herds still coalesce.
    cache = make_cache(max_fills=2, fill_memory=2 * CHUNK)
    images = {}
    for k in range(3):
        data = image_bytes(3 * CHUNK + 11, seed=410 + k)
        images[f"img{k}"] = (data, *(await add_image(cache, f"img{k}", data, cached=False)))
    upstream = ScriptedStore(file_store, piece=8 * KiB, delay=0.001)

    async def reader(image_id: str) -> str:
        data, manifest, location = images[image_id]
        out = bytearray()
        async for piece in cache.read(image_id, manifest, ByteRange(0, len(data)), upstream, location):
            out += piece
        return sha512(bytes(out))

    ids = [f"img{i % 3}" for i in range(12)]
    assert await asyncio.gather(*(reader(i) for i in ids)) == [sha512(images[i][0]) for i in ids]
    assert upstream.peak_active <= 2 and cache.admission.peak_bytes <= 2 * CHUNK
    assert upstream.bytes_read == sum(len(v[0]) for v in images.values())
