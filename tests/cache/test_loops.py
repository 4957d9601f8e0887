"""Pruner, prefetcher, cleaner and auditor; the Glance cache API's views."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from backends.base import ByteRange
from cache import ImageCache, Manifest
from imgproxy.db import open_env
from tests.cache.conftest import MAP_SIZE, cache_kwargs
from tests.cache.helpers import CHUNK, ScriptedStore, chunk_files, flip_byte, image_bytes, put_object, sha512


async def _drain(it) -> bytes:  # type: ignore[no-untyped-def]
    return b"".join([bytes(p) async for p in it])


def _disk_bytes(cache: ImageCache) -> int:
    total = 0
    for path in chunk_files(cache.store.root):
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            continue  # evicted between the listing and the stat
    return total


async def test_pruner_keeps_the_bound_under_concurrent_reads(make_cache, add_image, file_store):
    max_size = 10 * CHUNK
    cache = make_cache(max_size=max_size, high_watermark=0.8, low_watermark=0.5)
    images = {}
    for n in range(4):
        data = image_bytes(4 * CHUNK, seed=100 + n)
        manifest, location = await add_image(cache, f"img{n}", data, cached=False)
        images[f"img{n}"] = (data, manifest, location)
    upstream = ScriptedStore(file_store, piece=16 * 1024, delay=0.001)

    async def reader(image_id: str) -> None:
        data, manifest, location = images[image_id]
        for _ in range(3):
            assert await _drain(cache.read(image_id, manifest, ByteRange(0, len(data)), upstream, location)) == data

    async def pruner() -> None:
        for _ in range(20):
            await cache.prune()
            await asyncio.sleep(0.01)

    # The bound holds while the reads run, not only after a final prune: sample the chunk
    # files on disk throughout (16 images' worth of chunks go through a 10-chunk cache).
    samples: list[int] = []
    done = asyncio.Event()

    async def sampler() -> None:
        while not done.is_set():
            samples.append(await asyncio.to_thread(_disk_bytes, cache))
            await asyncio.sleep(0.005)

    watching = asyncio.ensure_future(sampler())
    await asyncio.gather(*(reader(i) for i in images), pruner())
    done.set()
    await watching
    assert len(samples) > 10 and max(samples) <= max_size, (len(samples), max(samples), max_size)
    await cache.wait_idle()
    stats = await cache.stats_async()
    assert _disk_bytes(cache) <= max_size and stats["bytes_cached"] <= max_size, (_disk_bytes(cache), stats, max_size)
    await cache.prune()
    stats = await cache.stats_async()
    assert stats["bytes_cached"] <= 0.8 * max_size, (stats, max_size)
    assert _disk_bytes(cache) == stats["bytes_cached"]
    assert stats["evicted_chunks"] > 0


async def test_evicted_bytes_count_as_used_until_their_files_are_gone(make_cache, add_image, monkeypatch):
    """An eviction commits the index (the total drops) before it unlinks the chunk files. Until
    a file is gone its bytes must still count as used, or a concurrent fill takes their room and
    the disk passes the bound for a moment (seen once as 11 chunks in a 10-chunk cache).
    ``_total()`` is what a write's room check counts (committed total plus pending)."""
    cache = make_cache(max_size=8 * CHUNK, high_watermark=0.5, low_watermark=0.25)
    for n in range(3):
        await add_image(cache, f"img{n}", image_bytes(2 * CHUNK, seed=130 + n))
        await asyncio.sleep(0.01)
    await cache.flush()
    seen: list[tuple[int, int]] = []
    remove = cache.store.remove

    def watched(address: bytes) -> bool:
        seen.append((_disk_bytes(cache), cache._total()))
        return remove(address)

    monkeypatch.setattr(cache.store, "remove", watched)
    assert (await cache.prune()).files == 4  # LRU: img0 and img1, down to the low watermark
    assert (await cache.evict_image_async("img2")).files == 2
    await add_image(cache, "img3", image_bytes(2 * CHUNK, seed=133))
    assert (await cache.clear_cache()).files == 2
    assert len(seen) == 8
    assert all(disk <= used for disk, used in seen), seen
    assert _disk_bytes(cache) == 0 and cache._total() == 0


async def test_pruner_evicts_least_recently_used_and_never_pinned(make_cache, add_image, file_store):
    cache = make_cache(max_size=8 * CHUNK, high_watermark=0.5, low_watermark=0.25)
    old, _ = await add_image(cache, "old", image_bytes(2 * CHUNK, seed=110))
    await asyncio.sleep(0.01)
    pinned, _ = await add_image(cache, "pinned", image_bytes(CHUNK, seed=111))
    await asyncio.sleep(0.01)
    new, location = await add_image(cache, "new", image_bytes(2 * CHUNK, seed=112))
    cache.pins.add(pinned.chunks[0])
    # Touch "pinned" least recently: only the pin keeps it.
    await asyncio.sleep(0.01)
    await _drain(cache.read("new", new, ByteRange(0, 2 * CHUNK), ScriptedStore(file_store), location))
    result = await cache.prune()
    assert result.files == 3
    assert cache.store.exists(pinned.chunks[0])
    assert not any(cache.store.exists(a) for a in old.chunks)
    assert all(cache.store.exists(a) for a in new.chunks) or (await cache.stats_async())["bytes_cached"] <= 2 * CHUNK
    cache.pins.remove(pinned.chunks[0])


async def test_evict_image_and_clear_cache(make_cache, add_image, file_store):
    cache = make_cache()
    base = image_bytes(3 * CHUNK, seed=120)
    a, location = await add_image(cache, "a", base)
    b, _ = await add_image(cache, "b", base[:CHUNK] + image_bytes(CHUNK, seed=121))
    await _drain(cache.read("a", a, ByteRange(0, len(base)), ScriptedStore(file_store), location))
    listed = {i["image_id"]: i for i in (await cache.cached_images_async())}
    assert listed["a"]["hits"] == 1 and listed["a"]["size"] == 3 * CHUNK and listed["a"]["complete"]
    assert listed["a"]["last_accessed"] > 0 and listed["a"]["last_modified"] > 0
    result = await cache.evict_image_async("a")
    assert result.files == 2  # the chunk shared with "b" stays
    assert cache.store.exists(a.chunks[0])
    listed = {i["image_id"]: i for i in (await cache.cached_images_async())}
    assert listed["a"]["size"] == CHUNK and not listed["a"]["complete"]
    cleared = await cache.clear_cache()
    assert cleared.files == 2
    assert (await cache.cached_images_async()) == [] and chunk_files(cache.store.root) == []
    assert cache.get_manifest("a") == a  # manifests stay: reads refill


async def test_prefetch_queue_persists_and_fills_images(tmp_path: Path, file_store, add_image):
    data_dir = tmp_path / "pdata"
    env = open_env(data_dir, MAP_SIZE)
    cache = ImageCache(data_dir / "cache", env, **cache_kwargs())
    data = image_bytes(3 * CHUNK + 5, seed=130)
    manifest, location = await add_image(cache, "img", data, cached=False)
    assert await cache.queue.add_async("img") and not await cache.queue.add_async("img")
    await cache.queue.add_async("gone")
    await cache.aclose()
    env.close()

    env = open_env(data_dir, MAP_SIZE)
    cache = ImageCache(data_dir / "cache", env, **cache_kwargs())
    try:
        assert cache.queue.items() == ["img", "gone"]
        upstream = ScriptedStore(file_store)

        async def resolve(image_id: str) -> tuple[Manifest, ScriptedStore, str] | None:
            found = cache.get_manifest(image_id)
            return None if found is None else (found, upstream, location)

        result = await cache.prefetch_pending(resolve, concurrency=2)
        assert (result.cached, result.failed, result.dropped) == (1, 0, 1)
        assert cache.queue.items() == []
        await cache.wait_idle()
        listed = (await cache.cached_images_async())
        assert [(i["image_id"], i["complete"], i["hits"]) for i in listed] == [("img", True, 0)]
        assert await cache.queue.add_async("img")
        assert await cache.queue.clear_async() == 1 and cache.queue.items() == []
    finally:
        await cache.aclose()
        env.close()


async def test_cleaner_reconciles_disk_and_index(make_cache, add_image, file_store):
    cache = make_cache()
    data = image_bytes(3 * CHUNK, seed=140)
    manifest, location = await add_image(cache, "img", data)
    root = cache.store.root
    # Leftovers: a temp file of a dead process, a stale .part with no lock holder.
    (root / "tmp" / "999999999-deadbeef").write_bytes(b"x" * 100)
    (root / "fills" / "abc.part").write_bytes(b"y" * 100)
    # A valid chunk file the index does not know (its batch was lost), and a bogus one.
    stray = image_bytes(CHUNK, seed=141)
    from cache.chunks import address_of
    stray_path = cache.store.path(address_of(stray))
    stray_path.parent.mkdir(parents=True, exist_ok=True)
    stray_path.write_bytes(stray)
    bogus_path = cache.store.path(address_of(b"other"))
    bogus_path.parent.mkdir(parents=True, exist_ok=True)
    bogus_path.write_bytes(b"not the right bytes")
    # An index entry whose file is gone.
    os.unlink(cache.store.path(manifest.chunks[2]))
    result = await cache.clean()
    assert (result.temp_files, result.fill_files, result.adopted, result.orphans_removed, result.missing) == (1, 1, 1, 1, 1)
    assert os.listdir(root / "tmp") == [] and os.listdir(root / "fills") == []
    assert (await cache.stats_async())["bytes_cached"] == _disk_bytes(cache) == 3 * CHUNK
    # The image still reads correctly (the missing chunk is refilled).
    assert await _drain(cache.read("img", manifest, ByteRange(0, len(data)), ScriptedStore(file_store), location)) == data
    # A young temp file of a live process is kept.
    (root / "tmp" / f"{os.getpid()}-cafe").write_bytes(b"z")
    assert (await cache.clean()).temp_files == 0
    old = time.time() - 7200
    os.utime(root / "tmp" / f"{os.getpid()}-cafe", (old, old))
    assert (await cache.clean()).temp_files == 1


async def test_audit_drops_corrupt_chunks_at_a_bounded_rate(make_cache, add_image, file_store):
    cache = make_cache(audit_bytes_per_second=4 * CHUNK)
    data = image_bytes(4 * CHUNK, seed=150)
    manifest, location = await add_image(cache, "img", data)
    flip_byte(cache.store.path(manifest.chunks[3]))
    first = await cache.audit(max_bytes=2 * CHUNK)
    second = await cache.audit(max_bytes=2 * CHUNK)
    assert first.chunks + second.chunks == 4
    assert first.corrupt + second.corrupt == 1
    assert not cache.store.exists(manifest.chunks[3])
    assert (await cache.stats_async())["chunks"] == 3
    upstream = ScriptedStore(file_store)
    assert sha512(await _drain(cache.read("img", manifest, ByteRange(0, len(data)), upstream, location))) == sha512(data)
    assert upstream.bytes_read == CHUNK


async def test_audit_rate_is_a_ceiling(make_cache, add_image, file_store):
    """8 chunks at 4 chunks a second cannot take less than ~2 s: the auditor paces itself
    (a lower bound on time, which a loaded machine can only lengthen)."""
    cache = make_cache(audit_bytes_per_second=4 * CHUNK)
    await add_image(cache, "img", image_bytes(8 * CHUNK, seed=151))
    began = time.monotonic()
    result = await cache.audit(max_bytes=8 * CHUNK)
    elapsed = time.monotonic() - began
    assert result.chunks == 8 and result.corrupt == 0
    assert elapsed >= 1.9, f"audited 8 chunks in {elapsed:.2f} s at 4 chunks/s"


async def test_forget_image_with_unknown_manifest_and_queue(make_cache, file_store):
    cache = make_cache()
    data = image_bytes(2 * CHUNK, seed=160)
    location = put_object(file_store.root, "u", data)
    await cache.put_manifest_async("u", Manifest.unknown(len(data), CHUNK))
    await cache.queue.add_async("u")
    await _drain(cache.read("u", cache.get_manifest("u"), ByteRange(0, len(data)), ScriptedStore(file_store), location))
    await cache.wait_idle()
    await cache.forget_image_async("u")
    assert cache.get_manifest("u") is None and cache.queue.items() == []
    await cache.clean()
    assert (await cache.stats_async())["chunks"] == 0 and chunk_files(cache.store.root) == []
