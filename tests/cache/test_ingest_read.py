"""Ingest and read: manifests, digests, dedup, ranges, hits, corruption, collisions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from backends.base import ByteRange
from cache import Manifest, UpstreamFailed
from cache.chunks import ChunkStore, WriteOutcome, address_of
from tests.cache.helpers import CHUNK, ScriptedStore, chunk_files, flip_byte, image_bytes, put_object, sha512


async def collect(it) -> bytes:  # type: ignore[no-untyped-def]
    return b"".join([bytes(p) async for p in it])


async def test_ingest_gives_manifest_with_glance_digests(make_cache, add_image, file_store):
    cache = make_cache()
    data = image_bytes(5 * CHUNK + 123, seed=1)
    manifest, _ = await add_image(cache, "img1", data)
    assert manifest.size == len(data)
    assert manifest.checksum == hashlib.md5(data).hexdigest()
    assert manifest.os_hash_value == sha512(data)
    assert len(manifest.chunks) == 6
    assert manifest.chunks[0] == address_of(data[:CHUNK])
    assert manifest.chunks[5] == address_of(data[5 * CHUNK:])
    assert cache.get_manifest("img1") == manifest
    assert Manifest.decode(manifest.encode()) == manifest
    assert (await cache.stats_async())["chunks"] == 6


async def test_sync_feed_matches_async_feed(make_cache):
    cache = make_cache()
    data = image_bytes(3 * CHUNK + 7, seed=2)
    ingest = cache.open_ingest("s")
    ingest.feed_sync(data)
    manifest = ingest.finish_sync()
    assert manifest.os_hash_value == sha512(data)
    assert len(manifest.chunks) == 4


async def test_cached_read_serves_from_disk_without_upstream(make_cache, add_image, file_store):
    cache = make_cache()
    data = image_bytes(4 * CHUNK + 10, seed=3)
    manifest, location = await add_image(cache, "img", data)
    upstream = ScriptedStore(file_store)
    got = await collect(cache.read("img", manifest, ByteRange(0, len(data)), upstream, location))
    assert got == data
    assert upstream.bytes_read == 0
    part = await collect(cache.read("img", manifest, ByteRange(CHUNK - 5, 3 * CHUNK + 9), upstream, location))
    assert part == data[CHUNK - 5:3 * CHUNK + 9]
    assert upstream.bytes_read == 0
    assert (await cache.stats_async())["hits"] >= 4


async def test_second_image_sharing_chunks_costs_only_new_chunks(make_cache, add_image):
    cache = make_cache()
    base = image_bytes(4 * CHUNK, seed=4)
    await add_image(cache, "a", base)
    before = await cache.stats_async()
    other = base[:3 * CHUNK] + image_bytes(CHUNK + 50, seed=5)  # 3 shared, 2 new chunks
    await add_image(cache, "b", other)
    after = await cache.stats_async()
    assert after["chunks"] - before["chunks"] == 2
    assert after["bytes_cached"] - before["bytes_cached"] == CHUNK + CHUNK + 50 - CHUNK
    # Deleting one image keeps the chunks the other still uses.
    await cache.forget_image_async("a")
    assert (await cache.stats_async())["chunks"] == 5
    await cache.forget_image_async("b")
    assert (await cache.stats_async())["chunks"] == 0
    assert chunk_files(cache.store.root) == []


async def test_cold_range_read_fills_only_needed_chunks_with_ranged_reads(make_cache, add_image, file_store):
    cache = make_cache()
    data = image_bytes(8 * CHUNK, seed=6)
    manifest, location = await add_image(cache, "img", data, cached=False)
    upstream = ScriptedStore(file_store)
    got = await collect(cache.read("img", manifest, ByteRange(2 * CHUNK + 10, 3 * CHUNK + 20), upstream, location))
    assert got == data[2 * CHUNK + 10:3 * CHUNK + 20]
    await cache.wait_idle()
    assert upstream.bytes_read == 2 * CHUNK
    assert sorted((r.start, r.end) for r in upstream.requests) == [(2 * CHUNK, 3 * CHUNK), (3 * CHUNK, 4 * CHUNK)]
    # Now those chunks are hits.
    await collect(cache.read("img", manifest, ByteRange(2 * CHUNK, 4 * CHUNK), upstream, location))
    assert upstream.bytes_read == 2 * CHUNK


async def test_unknown_addresses_are_learned_by_the_first_fill(make_cache, file_store):
    cache = make_cache()
    data = image_bytes(3 * CHUNK + 1, seed=7)
    location = put_object(file_store.root, "byurl", data)
    await cache.put_manifest_async("byurl", Manifest.unknown(len(data), CHUNK))
    upstream = ScriptedStore(file_store)
    manifest = cache.get_manifest("byurl")
    assert await collect(cache.read("byurl", manifest, ByteRange(0, len(data)), upstream, location)) == data
    assert upstream.bytes_read == len(data)
    await cache.wait_idle()
    await cache.flush()
    learned = cache.get_manifest("byurl")
    assert learned.chunks[0] == address_of(data[:CHUNK])
    assert None not in learned.chunks
    assert await collect(cache.read("byurl", learned, ByteRange(0, len(data)), upstream, location)) == data
    assert upstream.bytes_read == len(data)
    assert (await cache.cached_images_async())[0]["complete"] is True


async def test_chunks_a_read_learns_after_its_image_was_forgotten_do_not_stay(make_cache, file_store):
    # An edge drops an image whose bytes failed their check while another read of it, holding
    # the manifest from before the drop, still fills: what those fills store belongs to no image.
    cache = make_cache()
    data = image_bytes(3 * CHUNK + 1, seed=17)
    location = put_object(file_store.root, "gone", data)
    await cache.put_manifest_async("gone", Manifest.unknown(len(data), CHUNK))
    manifest = cache.get_manifest("gone")
    await cache.forget_image_async("gone")
    assert await collect(cache.read("gone", manifest, ByteRange(0, len(data)), ScriptedStore(file_store),
                                    location)) == data
    await cache.wait_idle()
    await cache.flush()
    assert cache.get_manifest("gone") is None
    assert (await cache.cached_images_async()) == []
    assert (await cache.stats_async())["bytes_cached"] == 0
    assert chunk_files(cache.store.root) == []


async def test_corrupt_chunk_is_dropped_refilled_and_never_served(make_cache, add_image, file_store):
    cache = make_cache()
    data = image_bytes(3 * CHUNK, seed=8)
    manifest, location = await add_image(cache, "img", data)
    flip_byte(cache.store.path(manifest.chunks[1]))
    upstream = ScriptedStore(file_store)
    assert await collect(cache.read("img", manifest, ByteRange(0, len(data)), upstream, location)) == data
    assert upstream.bytes_read == CHUNK
    assert (await cache.stats_async())["corrupt_chunks"] == 1
    await cache.wait_idle()
    assert cache.store.load(manifest.chunks[1], CHUNK) == data[CHUNK:2 * CHUNK]


async def test_upstream_bytes_not_matching_manifest_raise(make_cache, add_image, file_store):
    cache = make_cache()
    data = image_bytes(2 * CHUNK, seed=9)
    manifest, location = await add_image(cache, "img", data, cached=False)
    put_object(file_store.root, "img", image_bytes(2 * CHUNK, seed=10))  # the store's object changed
    with pytest.raises(Exception) as info:
        await collect(cache.read("img", manifest, ByteRange(0, len(data)), ScriptedStore(file_store), location))
    assert type(info.value).__name__ == "UpstreamCorrupt"
    assert not cache.store.exists(manifest.chunks[0])


def test_same_address_different_bytes_is_never_shared(tmp_path: Path):
    # A real xxh3-128 collision cannot be made here; claiming another chunk's address
    # for different bytes exercises the same byte-for-byte check.
    store = ChunkStore(tmp_path)
    a, b = image_bytes(CHUNK, 1), image_bytes(CHUNK, 2)
    addr = address_of(a)
    assert store.write(addr, a) is WriteOutcome.STORED
    assert store.write(addr, a) is WriteOutcome.SHARED
    assert store.write(addr, b) is WriteOutcome.COLLISION
    assert store.write(addr, a[:100]) is WriteOutcome.COLLISION
    assert store.load(addr, CHUNK) == a
    # A corrupt file under the address is replaced, not compared.
    flip_byte(store.path(addr))
    assert store.write(addr, a) is WriteOutcome.STORED
    assert store.load(addr, CHUNK) == a


async def test_collision_chunks_are_read_from_the_store_uncached(make_cache, add_image, file_store):
    cache = make_cache()
    data = image_bytes(3 * CHUNK, seed=11)
    manifest, location = await add_image(cache, "img", data, cached=False)
    marked = manifest.with_collision(1)
    await cache.put_manifest_async("img", marked)
    upstream = ScriptedStore(file_store)
    for _ in range(2):
        assert await collect(cache.read("img", marked, ByteRange(0, len(data)), upstream, location)) == data
    assert upstream.bytes_read == 4 * CHUNK  # chunks 0 and 2 once, chunk 1 on every read


async def test_cache_full_serves_from_store_without_caching(make_cache, add_image, file_store):
    cache = make_cache(max_size=CHUNK // 2)
    data = image_bytes(3 * CHUNK, seed=12)
    manifest, location = await add_image(cache, "img", data)
    assert (await cache.stats_async())["chunks"] == 0
    upstream = ScriptedStore(file_store)
    assert await collect(cache.read("img", manifest, ByteRange(0, len(data)), upstream, location)) == data
    assert upstream.bytes_read == len(data)
    assert (await cache.stats_async())["chunks"] == 0
    assert (await cache.stats_async())["uncached_fills"] == 3


async def test_abort_leaves_nothing_referenced(make_cache):
    cache = make_cache()
    ingest = cache.open_ingest("x")
    await ingest.feed(image_bytes(3 * CHUNK, seed=13))
    await ingest.abort()
    await ingest.abort()
    assert cache.get_manifest("x") is None
    assert (await cache.stats_async())["chunks"] == 0
    assert chunk_files(cache.store.root) == []


async def test_missing_store_object_raises_upstream_failed(make_cache, add_image, file_store):
    cache = make_cache()
    data = image_bytes(2 * CHUNK, seed=14)
    manifest, location = await add_image(cache, "img", data, cached=False)
    (file_store.root / "img").unlink()
    with pytest.raises(UpstreamFailed):
        await collect(cache.read("img", manifest, ByteRange(0, len(data)), ScriptedStore(file_store), location))


async def test_a_held_piece_may_be_reused_once_its_future_is_done(make_cache):
    # Uploads lend the ingest their piece buffers (feed_held, no copy) and refill a buffer only
    # when the returned future is done: the digests and chunk addresses are the data's.
    import mmap

    cache = make_cache()
    data = image_bytes(6 * CHUNK + 5, seed=4)
    ingest = cache.open_ingest("held")
    buffer = memoryview(mmap.mmap(-1, 2 * CHUNK))
    for start in range(0, len(data), 2 * CHUNK):
        piece = data[start:start + 2 * CHUNK]
        buffer[:len(piece)] = piece
        done = await ingest.feed_held(buffer[:len(piece)])
        await done
        buffer[:] = b"\xff" * len(buffer)  # reused: nothing may read it any more
    manifest = await ingest.finish()
    assert manifest.checksum == hashlib.md5(data).hexdigest()
    assert manifest.os_hash_value == sha512(data)
    assert manifest.chunks == tuple(address_of(data[i:i + CHUNK]) for i in range(0, len(data), CHUNK))
