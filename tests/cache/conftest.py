"""Fixtures for the cache tests: a real LMDB env, a real file store, caches on tmp dirs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import lmdb
import pytest

from backends.file import FileBackend
from cache import ImageCache, Manifest
from imgproxy.db import open_env
from tests.cache.helpers import CHUNK, put_object

MAP_SIZE = 256 * 1024 * 1024


def cache_kwargs(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(chunk_size=CHUNK, max_size=64 * 1024 * 1024, high_watermark=0.9,
                                  low_watermark=0.8, upstream_retries=3, audit_bytes_per_second=0,
                                  stale_temp_age=3600.0, stall_timeout=5.0, flush_interval=0.05)
    kwargs.update(overrides)
    return kwargs


@pytest.fixture
def env(tmp_path: Path) -> Any:
    e = open_env(tmp_path / "data", MAP_SIZE)
    yield e
    e.close()


@pytest.fixture
def file_store(tmp_path: Path) -> FileBackend:
    return FileBackend.from_url((tmp_path / "store").as_uri(), {})


@pytest.fixture
async def make_cache(tmp_path: Path, env: lmdb.Environment) -> AsyncIterator[Callable[..., ImageCache]]:
    made: list[ImageCache] = []

    def make(**overrides: Any) -> ImageCache:
        c = ImageCache(tmp_path / "data" / "cache", env, **cache_kwargs(**overrides))
        made.append(c)
        return c

    yield make
    for c in made:
        await c.aclose()


@pytest.fixture
def add_image(file_store: FileBackend) -> Callable[[ImageCache, str, bytes], Any]:
    """``await add_image(cache, id, data)``: store the bytes, ingest them, record the manifest.
    Returns (manifest, location)."""

    async def add(cache: ImageCache, image_id: str, data: bytes, *, cached: bool = True) -> tuple[Manifest, str]:
        location = put_object(file_store.root, image_id, data)
        ingest = cache.open_ingest(image_id)
        for i in range(0, len(data), 10_000):  # odd piece size: chunks span pieces
            await ingest.feed(data[i:i + 10_000])
        manifest = await ingest.finish()
        await cache.put_manifest_async(image_id, manifest)
        if not cached:
            await cache.evict_image_async(image_id)
        return manifest, location

    return add
