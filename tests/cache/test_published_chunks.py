"""A published chunk file never changes: not even when a crash left a fill file linked to it."""

from __future__ import annotations

import asyncio
import os

from backends.base import ByteRange
from cache import Manifest
from tests.cache.helpers import CHUNK, KiB, ScriptedStore, image_bytes, put_object


async def _collect(it) -> bytes:  # type: ignore[no-untyped-def]
    return b"".join([bytes(p) async for p in it])


async def test_fill_after_a_crash_between_link_and_unlink_leaves_the_published_chunk_intact(
        make_cache, add_image, file_store):
    # A fill publishes fills/<key>.part by linking it into chunks/, then removes the
    # .part name; kill -9 between the two leaves a .part that *is* the published chunk.
    cache = make_cache()
    data = image_bytes(2 * CHUNK, seed=300)
    manifest_a, location_a = await add_image(cache, "a", data)  # chunk 0 published
    published = cache.store.path(manifest_a.chunks[0])
    inode = published.stat().st_ino
    # Image "b" has the same bytes, registered by location: its chunk addresses are
    # unknown until filled, so its fill cannot know that chunk 0 is already cached.
    location_b = put_object(file_store.root, "b", data)
    manifest_b = Manifest.unknown(len(data), CHUNK)
    await asyncio.to_thread(cache.put_manifest, "b", manifest_b)
    slow = ScriptedStore(file_store, piece=4 * KiB, delay=0.01)
    key = cache.reader._spec("b", manifest_b, 0, slow, location_b).key
    os.link(published, cache.store.fills_dir / f"{key}.part")  # the crash leftover

    reader_b = cache.read("b", manifest_b, ByteRange(0, CHUNK), slow, location_b)
    first = await anext(reader_b)  # the fill of b's chunk 0 is under way
    assert published.read_bytes() == data[:CHUNK]
    # A reader of "a" meanwhile gets its bytes from the cache, not the store.
    direct = ScriptedStore(file_store)
    assert await _collect(cache.read("a", manifest_a, ByteRange(0, len(data)), direct, location_a)) == data
    assert direct.bytes_read == 0
    assert bytes(first) + await _collect(reader_b) == data[:CHUNK]
    await cache.wait_idle()
    assert published.stat().st_ino == inode and published.read_bytes() == data[:CHUNK]
    assert await _collect(cache.read("b", manifest_b, ByteRange(0, len(data)), direct, location_b)) == data
