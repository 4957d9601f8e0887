"""The cache's guarantees as a user of a real server sees them: uploads are cached, downloads
come from chunks, corrupt or lost chunks are refilled, crashes leave nothing half-written
behind, the size limit holds, shared chunks are stored once, and worker processes share fills."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.cache_http import (
    CHUNK,
    CacheClient,
    cache_server_config,
    chunk_files,
    payload,
    wait_for,
)
from tests.server import ServerProcess

Start = Callable[..., tuple[ServerProcess, CacheClient]]


@pytest.fixture
def start(server_factory: Callable[..., ServerProcess]) -> Iterator[Start]:
    clients: list[CacheClient] = []

    def make(workers: int = 1, **config: object) -> tuple[ServerProcess, CacheClient]:
        server = server_factory(config=cache_server_config(**config), workers=workers)
        clients.append(CacheClient(server))
        return server, clients[-1]

    yield make
    for c in clients:
        c.close()


def hide_store_object(server: ServerProcess, image_id: str) -> Path:
    stored = server.data_dir / "images" / image_id
    hidden = stored.with_name("hidden-" + image_id)
    os.rename(stored, hidden)
    return hidden


def run_clean(server: ServerProcess) -> str:
    config = server.data_dir.parent / f"{server.data_dir.name}-config.toml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGPROXY_")}
    r = subprocess.run(
        [sys.executable, "-m", "imgproxy", "cache", "clean", "--stale-age", "0",
         "--data-dir", str(server.data_dir), "--config", str(config)],
        check=False, capture_output=True, text=True, env=env, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def leftovers(data_dir: Path) -> list[str]:
    """Temp and part files anywhere under the data dir (crash leftovers)."""
    found = []
    for path in data_dir.rglob("*"):
        rel = path.relative_to(data_dir)
        if path.is_file() and (rel.parts[:2] == ("cache", "tmp") or path.name.endswith(".part")
                               or path.name.startswith(".tmp-")):
            found.append(str(rel))
    return found


# --- served from the cache ----------------------------------------------------------------------------


def test_upload_is_cached_and_served_without_the_store(start: Start) -> None:
    server, api = start()
    data = payload(6 * CHUNK + 1000, seed=1)
    image_id = api.new_image(data)
    assert api.cached()[image_id]["size"] == len(data)
    upstream = api.stats()["bytes_upstream"]

    hide_store_object(server, image_id)
    assert api.download(image_id) == data
    r = api.http.get(f"/v2/images/{image_id}/file", headers={"Range": f"bytes={CHUNK - 10}-{3 * CHUNK + 9}"})
    assert r.status_code == 206
    assert r.content == data[CHUNK - 10:3 * CHUNK + 10]
    assert api.stats()["bytes_upstream"] == upstream  # not one byte read from the store


def test_evicted_image_is_refilled_from_the_store(start: Start) -> None:
    server, api = start()
    data = payload(5 * CHUNK + 3, seed=2)
    image_id = api.new_image(data)
    before = api.stats()
    assert api.http.delete(f"/v2/cache/{image_id}").status_code == 204
    assert chunk_files(server.data_dir) == []

    assert api.download(image_id) == data
    after = wait_for(lambda: (s := api.stats())["bytes_cached"] == len(data) and s)
    assert after, api.stats()
    assert after["bytes_upstream"] == before["bytes_upstream"] + len(data)
    hide_store_object(server, image_id)  # the refill is complete: the cache alone serves it
    assert api.download(image_id) == data



def test_a_cold_reader_is_sent_its_read_ahead_from_memory(start: Start) -> None:
    """Read-ahead that ends before its reader gets to it is still sent from the fill's
    buffer: a cold fill writes its chunk file past the page cache, so sending it from the
    file instead would read every such byte back from the disk."""
    server, api = start(readahead_chunks=4)
    data = payload(64 * CHUNK, seed=12)
    image_id = api.new_image(data)
    assert api.http.delete(f"/v2/cache/{image_id}").status_code == 204
    for _ in range(3):
        assert api.download(image_id) == data
        assert api.http.delete(f"/v2/cache/{image_id}").status_code == 204
    served = {line.split()[0]: float(line.split()[1]) for line in api.http.get("/metrics").text.splitlines()
              if line.startswith("imgproxy_image_served_bytes_total{")}
    assert served == {'imgproxy_image_served_bytes_total{source="cache"}': 0.0,
                      'imgproxy_image_served_bytes_total{source="fill"}': 3.0 * len(data)}

def test_corrupt_chunk_is_never_served(start: Start) -> None:
    server, api = start()
    data = payload(4 * CHUNK, seed=3)
    image_id = api.new_image(data)
    files = chunk_files(server.data_dir)
    assert len(files) == 4
    victim = files[2]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    corrupt = api.stats()["corrupt_chunks"]

    assert api.download(image_id) == data
    assert wait_for(lambda: api.stats()["corrupt_chunks"] == corrupt + 1)
    # The refill put the right bytes back.
    assert wait_for(lambda: api.stats()["bytes_cached"] == len(data))
    hide_store_object(server, image_id)
    assert api.download(image_id) == data


def test_second_image_sharing_chunks_costs_only_its_new_chunks(start: Start) -> None:
    server, api = start()
    base = payload(6 * CHUNK, seed=4)
    first = api.new_image(base)
    assert api.stats()["bytes_cached"] == len(base)

    tail = payload(2 * CHUNK + 100, seed=5)
    second = api.new_image(base[: 4 * CHUNK] + tail)
    stats = api.stats()
    assert stats["bytes_cached"] == len(base) + len(tail)
    assert stats["chunks"] == 6 + 3
    assert len(chunk_files(server.data_dir)) == 9
    assert api.download(first) == base
    assert api.download(second) == base[: 4 * CHUNK] + tail

    # Evicting one image keeps the chunks the other still uses.
    assert api.http.delete(f"/v2/cache/{first}").status_code == 204
    assert api.cached()[second]["size"] == 4 * CHUNK + len(tail)
    assert api.stats()["bytes_cached"] == 4 * CHUNK + len(tail)


def read_concurrently(server: ServerProcess, images: dict[str, bytes], rounds: int = 3) -> list[str]:
    """Download every image ``rounds`` times, one thread per image; return the ids read wrong."""
    errors: list[str] = []

    def read_all(image_id: str, data: bytes) -> None:
        with httpx.Client(base_url=server.url, headers={"X-Auth-Token": server.admin_token}, timeout=60) as c:
            for _ in range(rounds):
                if c.get(f"/v2/images/{image_id}/file").content != data:
                    errors.append(image_id)

    threads = [threading.Thread(target=read_all, args=item) for item in images.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_pruner_keeps_cache_under_its_limit(start: Start) -> None:
    max_size = 12 * CHUNK
    server, api = start(cache_max_size=max_size, cache_high_watermark=0.9, cache_low_watermark=0.6,
                        prune_interval=0.2)
    images = {}
    for i in range(4):  # 20 chunks for a 12-chunk cache
        data = payload(5 * CHUNK, seed=10 + i)
        images[api.new_image(data)] = data

    assert read_concurrently(server, images) == []
    r = api.http.post("/v2/cache/prune")
    assert r.status_code == 200
    stats = wait_for(lambda: (s := api.stats())["bytes_cached"] <= 0.9 * max_size and s)
    assert stats, api.stats()
    assert sum(p.stat().st_size for p in chunk_files(server.data_dir)) == stats["bytes_cached"]
    assert stats["evicted_bytes"] > 0


def test_uploads_never_exceed_the_limit(start: Start) -> None:
    max_size = 12 * CHUNK
    _, api = start(cache_max_size=max_size)
    for i in range(4):
        api.new_image(payload(5 * CHUNK, seed=10 + i))
        assert api.stats()["bytes_cached"] <= max_size


def test_a_full_cache_makes_room_for_new_uploads_from_the_oldest_chunks(start: Start) -> None:
    max_size = 12 * CHUNK  # low watermark (0.8): 9.6 chunks
    _, api = start(cache_max_size=max_size)
    first = api.new_image(payload(8 * CHUNK, seed=40))
    second = api.new_image(payload(8 * CHUNK, seed=41))
    # The second upload is cached whole: the first image's chunks made room, not the new ones.
    cached = api.cached()
    assert second in cached and first not in cached
    stats = api.stats()
    assert stats["bytes_cached"] <= max_size
    assert stats["evicted_chunks"] >= 4


# --- crashes ------------------------------------------------------------------------------------------


def kill_during_upload(server: ServerProcess, api: CacheClient, size: int) -> str:
    """Send over half of an upload's body on a raw socket, wait until the server is writing
    chunks of it, and kill -9 the server. Returns the image id. ``size`` must exceed two
    upload pieces (4 MiB each): the server writes whole pieces."""
    image_id = api.create_image()
    head = (
        f"PUT /v2/images/{image_id}/file HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"X-Auth-Token: {server.admin_token}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + payload(size // 2 + 1000, seed=20))
        assert wait_for(lambda: api.status(image_id) == "saving")
        assert wait_for(lambda: any(any((server.data_dir / "cache" / d).iterdir()) for d in ("tmp", "chunks")))
        server.kill()
    return image_id


def test_kill_during_upload_leaves_nothing_half_written(start: Start) -> None:
    server, api = start()
    image_id = kill_during_upload(server, api, 160 * CHUNK)
    server.start()  # same data dir
    assert image_id not in api.cached()
    assert api.http.get(f"/v2/images/{image_id}/file").status_code == 204  # no data, never partial bytes
    run_clean(server)
    assert leftovers(server.data_dir) == []
    # What chunks the half upload left are adopted, verified chunks: they serve a full upload.
    stats = api.stats()
    assert sum(p.stat().st_size for p in chunk_files(server.data_dir)) == stats["bytes_cached"]


def test_kill_during_upload_then_restart_image_is_queued(start: Start) -> None:
    server, api = start()
    size = 160 * CHUNK
    image_id = kill_during_upload(server, api, size)
    server.start()
    assert wait_for(lambda: api.status(image_id) == "queued"), api.status(image_id)
    data = payload(size, seed=21)
    api.upload(image_id, data)
    assert api.download(image_id) == data
    assert api.cached()[image_id]["size"] == size


def test_kill_during_fill_then_restart_serves_correct_bytes(start: Start) -> None:
    server, api = start()
    data = payload(64 * CHUNK, seed=30)  # 4 MiB: a fill that takes a moment
    image_id = api.new_image(data)
    assert api.http.delete(f"/v2/cache/{image_id}").status_code == 204

    with (
        httpx.Client(base_url=server.url, headers={"X-Auth-Token": server.admin_token}, timeout=60) as c,
        c.stream("GET", f"/v2/images/{image_id}/file") as r,
    ):
        first = next(r.iter_bytes())
        assert data.startswith(first)
        server.kill()

    server.start()
    assert api.download(image_id) == data
    run_clean(server)
    assert leftovers(server.data_dir) == []
    assert wait_for(lambda: api.stats()["bytes_cached"] == len(data)), api.stats()
    hide_store_object(server, image_id)
    assert api.download(image_id) == data  # every chunk kept or refilled is correct


# --- several worker processes -----------------------------------------------------------------------------


def test_two_workers_concurrent_cold_downloads_are_exact(start: Start) -> None:
    server, api = start(workers=2)
    data = payload(32 * CHUNK + 5, seed=40)
    image_id = api.new_image(data)
    assert api.http.delete(f"/v2/cache/{image_id}").status_code == 204
    before = api.stats()["bytes_upstream"]

    results: list[bool] = []

    def fetch() -> None:
        # A client per thread: separate connections land on either worker.
        with httpx.Client(base_url=server.url, headers={"X-Auth-Token": server.admin_token}, timeout=60) as c:
            results.append(c.get(f"/v2/images/{image_id}/file").content == data)

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 8
    # Fills are single-flight across processes: the store was read once. Each worker
    # flushes its counters when asked for stats, so ask on fresh connections (either worker).

    def upstream() -> int:
        r = httpx.get(server.url + "/v2/cache/stats", headers={"X-Auth-Token": server.admin_token,
                                                               "Connection": "close"})
        return int(r.json()["bytes_upstream"])

    after = wait_for(lambda: (b := upstream()) >= before + len(data) and b)
    assert after == before + len(data)
    assert api.cached()[image_id]["size"] == len(data)
