"""Across processes: single-flight fills, and recovery after kill -9 mid-fill or mid-ingest."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.base import ByteRange
from cache import ImageCache
from cache.chunks import address_of
from tests.cache.helpers import CHUNK, ScriptedStore, chunk_files, image_bytes, sha512

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spawn() -> Iterator:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        p = subprocess.Popen([sys.executable, "-m", "tests.cache.proc_worker", *args], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()
        if p.stdout:
            p.stdout.close()


def _expect(proc: subprocess.Popen[str], line: str) -> None:
    got = proc.stdout.readline().strip()  # type: ignore[union-attr]
    assert got == line, f"worker said {got!r}, expected {line!r}"


async def _verify_consistent(cache: ImageCache) -> None:
    """Every chunk file is valid and indexed; the index's total matches the disk."""
    await cache.clean(stale_age=3600)
    files = chunk_files(cache.store.root)
    for path in files:
        assert address_of(path.read_bytes()).hex() == path.parent.name + path.name
    stats = await cache.stats_async()
    assert stats["chunks"] == len(files)
    assert stats["bytes_cached"] == sum(p.stat().st_size for p in files)
    assert os.listdir(cache.store.tmp_dir) == []
    assert [n for n in os.listdir(cache.store.fills_dir)] == []


async def test_two_processes_reading_a_cold_image_read_upstream_once(tmp_path, env, make_cache, add_image,
                                                                     file_store, spawn):
    cache = make_cache()
    data = image_bytes(5 * CHUNK + 77, seed=200)
    await add_image(cache, "img", data, cached=False)
    await cache.flush()
    go = tmp_path / "go"
    workers = [spawn("read", str(tmp_path / "data"), str(file_store.root), "img", "0.004", str(go))
               for _ in range(2)]
    for w in workers:
        _expect(w, "ready")
    go.touch()
    results = []
    for w in workers:
        _expect(w, "first")
        results.append(json.loads(w.stdout.readline()))
        assert w.wait(timeout=60) == 0
    assert [r["sha512"] for r in results] == [sha512(data)] * 2
    assert sum(r["bytes_read"] for r in results) == len(data)
    assert (await cache.stats_async())["coalesced_waiters"] >= 1  # one process tailed the other's fills
    await _verify_consistent(cache)
    assert (await cache.stats_async())["chunks"] == 6


async def test_kill_mid_fill_then_recovery_is_consistent(tmp_path, env, make_cache, add_image, file_store, spawn):
    cache = make_cache()
    data = image_bytes(6 * CHUNK, seed=210)
    manifest, location = await add_image(cache, "img", data, cached=False)
    await cache.flush()
    go = tmp_path / "go"
    go.touch()
    worker = spawn("read", str(tmp_path / "data"), str(file_store.root), "img", "0.01", str(go))
    _expect(worker, "ready")
    _expect(worker, "first")
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    assert any(n.endswith(".part") for n in os.listdir(cache.store.fills_dir))
    await _verify_consistent(cache)
    upstream = ScriptedStore(file_store)
    got = b"".join([bytes(p) async for p in cache.read("img", manifest, ByteRange(0, len(data)), upstream, location)])
    assert got == data
    await cache.wait_idle()
    await _verify_consistent(cache)
    assert (await cache.stats_async())["chunks"] == 6


async def test_kill_mid_ingest_then_recovery_is_consistent(tmp_path, env, make_cache, spawn):
    cache = make_cache()
    size = 8 * CHUNK
    worker = spawn("ingest", str(tmp_path / "data"), "up", "220", str(size), "0.05")
    for n in range(3):
        _expect(worker, f"fed {n}")
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    await _verify_consistent(cache)
    assert cache.get_manifest("up") is None
    # What survived are valid, unreferenced chunks the pruner may evict like any other.
    data = image_bytes(size, 220)
    known = {address_of(data[i:i + CHUNK]).hex() for i in range(0, size, CHUNK)}
    assert {p.parent.name + p.name for p in chunk_files(cache.store.root)} <= known
    await cache.clear_cache()
    assert chunk_files(cache.store.root) == []


def _reader_pids(env) -> set[int]:  # type: ignore[no-untyped-def]
    # env.readers(): a header line, then "pid thread txnid" per slot in use.
    return {int(line.split()[0]) for line in env.readers().splitlines()[1:] if line.split()}


async def test_reader_slot_of_a_killed_process_is_freed_by_the_cleaner(tmp_path, env, make_cache, spawn):
    cache = make_cache()
    worker = spawn("hold-read", str(tmp_path / "data"))
    _expect(worker, "reading")
    assert worker.pid in _reader_pids(env)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    assert worker.pid in _reader_pids(env)  # a dead reader pins old pages until cleared
    await cache.clean()
    assert worker.pid not in _reader_pids(env)


async def test_tailer_of_a_wedged_owner_fetches_the_rest_itself(tmp_path, env, make_cache, add_image, file_store,
                                                                spawn):
    cache = make_cache(stall_timeout=0.5)
    data = image_bytes(4 * CHUNK, seed=230)
    manifest, location = await add_image(cache, "img", data, cached=False)
    go = tmp_path / "go"
    go.touch()
    # The owner flushes its index rarely, so that it is not stopped holding the LMDB write lock.
    owner = spawn("read", str(tmp_path / "data"), str(file_store.root), "img", "0.02", str(go), "3600")
    _expect(owner, "ready")
    _expect(owner, "first")  # it holds the fill locks of chunks 0..2 now
    os.kill(owner.pid, signal.SIGSTOP)  # a real wedge: locks held, no progress
    try:
        assert any(n.endswith(".lock") for n in os.listdir(cache.store.fills_dir))
        upstream = ScriptedStore(file_store)
        async with asyncio.timeout(30):
            got = b"".join([bytes(p) async for p in
                            cache.read("img", manifest, ByteRange(0, len(data)), upstream, location)])
        assert got == data
        assert 0 < upstream.bytes_read <= len(data)  # it read what the owner had not written
        await cache.wait_idle()
    finally:
        os.kill(owner.pid, signal.SIGCONT)
