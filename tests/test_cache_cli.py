"""``imgproxy cache prune|clean|prefetch``: one-shot runs next to a real server on the same data dir."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

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


def run_cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with the server's own config file (same chunk size and limits)."""
    config = server.data_dir.parent / f"{server.data_dir.name}-config.toml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGPROXY_")}
    cmd = [sys.executable, "-m", "imgproxy", "cache", *args, "--data-dir", str(server.data_dir), "--config", str(config)]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def start(server_factory: Callable[..., ServerProcess]) -> Iterator[Callable[..., tuple[ServerProcess, CacheClient]]]:
    clients: list[CacheClient] = []

    def make(**config: object) -> tuple[ServerProcess, CacheClient]:
        server = server_factory(config=cache_server_config(**config))
        clients.append(CacheClient(server))
        return server, clients[-1]

    yield make
    for c in clients:
        c.close()


def test_prune_brings_cache_under_low_watermark(start: Callable[..., tuple[ServerProcess, CacheClient]]) -> None:
    max_size = 10 * CHUNK
    server, api = start(cache_max_size=max_size, cache_high_watermark=0.9, cache_low_watermark=0.5)
    images = {api.new_image(payload(CHUNK, seed=i)): payload(CHUNK, seed=i) for i in range(10)}
    assert api.stats()["bytes_cached"] == max_size  # uploads fill it; nothing pruned yet

    r = run_cli(server, "prune")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"imgproxy cache prune: pruned 5 chunk files, {5 * CHUNK} bytes"
    assert api.stats()["bytes_cached"] <= max_size // 2
    assert len(chunk_files(server.data_dir)) == 5
    # The server still serves everything: pruned chunks are refilled from the store.
    for image_id, data in images.items():
        assert api.download(image_id) == data

    r = run_cli(server, "prune")
    assert r.stdout.strip() == "imgproxy cache prune: pruned 0 chunk files, 0 bytes"


def test_clean_removes_leftovers(start: Callable[..., tuple[ServerProcess, CacheClient]]) -> None:
    server, api = start()
    data = payload(3 * CHUNK, seed=1)
    image_id = api.new_image(data)
    cache_root = server.data_dir / "cache"
    # What a crash leaves: an ingest temp file of a dead process, a fill's part file,
    # a chunk file whose bytes do not match its name, and a store temp file.
    dead_pid = 2**22 + 17  # above any pid_max default, so never a live process
    (cache_root / "tmp" / f"{dead_pid}-0123456789abcdef").write_bytes(b"half a chunk")
    (cache_root / "fills" / "deadbeef.part").write_bytes(b"half a fill")
    bogus = cache_root / "chunks" / "ab" / ("cd" * 15)
    bogus.parent.mkdir(exist_ok=True)
    bogus.write_bytes(b"not the chunk this name promises")
    store_temp = server.data_dir / "images" / ".tmp-crashed-upload"
    store_temp.write_bytes(b"partial image")

    r = run_cli(server, "clean", "--stale-age", "0")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    assert line.startswith("imgproxy cache clean: cleaned 1 temp files, 1 fill files, 1 orphan chunks, 1 store temp files")
    assert os.listdir(cache_root / "tmp") == []
    assert [n for n in os.listdir(cache_root / "fills") if n.endswith(".part")] == []
    assert not bogus.exists() and not store_temp.exists()
    # Real chunks stay and still serve the image without the store.
    assert len(chunk_files(server.data_dir)) == 3
    assert api.cached()[image_id]["size"] == 3 * CHUNK
    assert api.download(image_id) == data


def test_prefetch_fills_a_queued_image(start: Callable[..., tuple[ServerProcess, CacheClient]]) -> None:
    server, api = start()
    data = payload(4 * CHUNK + 7, seed=2)
    image_id = api.new_image(data)
    assert api.http.delete(f"/v2/cache/{image_id}").status_code == 204
    # Hide the store object while queueing so the server's own prefetch attempt fails
    # and the image stays queued for the CLI.
    stored = server.data_dir / "images" / image_id
    hidden = stored.with_name("hidden-" + image_id)
    os.rename(stored, hidden)
    failures = api.stats()["fill_failures"]
    assert api.http.put(f"/v2/cache/{image_id}").status_code == 202
    assert wait_for(lambda: (s := api.stats())["fill_failures"] > failures and s["active_fills"] == 0)
    assert api.queued() == [image_id]
    os.rename(hidden, stored)

    r = run_cli(server, "prefetch")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("imgproxy cache prefetch: prefetched 1 queued images")
    assert "cached=1" in r.stdout
    assert api.queued() == []
    assert api.cached()[image_id]["size"] == len(data)
    os.rename(stored, hidden)  # served from the chunks the CLI wrote
    assert api.download(image_id) == data


def test_cli_needs_existing_data(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGPROXY_")}
    r = subprocess.run([sys.executable, "-m", "imgproxy", "cache", "prune", "--data-dir", str(tmp_path / "none")],
                       check=False, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2
    assert "data_dir" in r.stderr
    assert not (tmp_path / "none").exists()
