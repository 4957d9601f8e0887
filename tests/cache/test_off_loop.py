"""Nothing in the cache blocks the event loop: verification runs on threads, LMDB writes on the writer."""

from __future__ import annotations

import threading

import pytest

from backends.base import ByteRange
from cache.txn import DbWriter, LoopWriteError, write_txn
from cache.verified import VerifiedRanges
from tests.cache.helpers import CHUNK, ScriptedStore, image_bytes


async def test_a_write_transaction_on_the_event_loop_raises(env):
    with pytest.raises(LoopWriteError):
        write_txn(env)
    writer = DbWriter()
    try:
        with pytest.raises(LoopWriteError):
            writer.call(lambda: None)  # blocking for a commit on the loop is refused too

        def put() -> None:
            with write_txn(env) as txn:
                txn.put(b"k", b"v")

        await writer.run(put)  # the same write on the writer thread is fine
        with env.begin() as txn:
            assert txn.get(b"k") == b"v"
    finally:
        writer.close()


async def test_cache_writes_called_on_the_loop_raise_and_their_async_forms_work(make_cache, add_image):
    cache = make_cache()
    manifest, _ = await add_image(cache, "img", image_bytes(2 * CHUNK, seed=500))
    with pytest.raises(LoopWriteError):
        cache.put_manifest("other", manifest)
    with pytest.raises(LoopWriteError):
        cache.flush_access_times()
    await cache.put_manifest_async("other", manifest)
    assert cache.get_manifest("other") == manifest
    await cache.forget_image_async("other")
    assert cache.get_manifest("other") is None


async def test_a_shared_writer_is_used_and_left_open(make_cache, add_image):
    writer = DbWriter()
    try:
        cache = make_cache(writer=writer)
        await add_image(cache, "img", image_bytes(CHUNK, seed=501))
        await cache.aclose()
        await writer.run(lambda: None)  # still running: the service closes it
    finally:
        writer.close()


async def test_chunk_verification_and_loads_run_off_the_event_loop(make_cache, add_image, file_store):
    cache = make_cache()
    data = image_bytes(4 * CHUNK, seed=502)
    cached, location = await add_image(cache, "cached", data)
    cold, cold_location = await add_image(cache, "cold", image_bytes(3 * CHUNK, seed=503), cached=False)
    threads: list[tuple[str, int]] = []
    store = cache.store
    verify, load = store.open_verified, store.load

    def recording_verify(address: bytes, length: int, verified: VerifiedRanges | None = None) -> int | None:
        threads.append(("verify", threading.get_ident()))
        return verify(address, length, verified)

    def recording_load(address: bytes, length: int) -> bytes | None:
        threads.append(("load", threading.get_ident()))
        return load(address, length)

    # Instance attributes over the methods: a test-only wrapper that records the thread.
    store.open_verified = recording_verify  # type: ignore[method-assign]
    store.load = recording_load  # type: ignore[method-assign]
    upstream = ScriptedStore(file_store)
    got = b"".join([bytes(p) async for p in cache.read("cached", cached, ByteRange(0, len(data)), upstream, location)])
    assert got == data and upstream.bytes_read == 0
    # A cold image with known addresses: the fill owner first looks for the finished chunk.
    async for _ in cache.read("cold", cold, ByteRange(0, 3 * CHUNK), upstream, cold_location):
        pass
    await cache.wait_idle()
    loop_thread = threading.get_ident()
    assert {kind for kind, _ in threads} == {"verify", "load"}
    assert all(thread != loop_thread for _, thread in threads)
