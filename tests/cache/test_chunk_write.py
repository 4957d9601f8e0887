"""Chunk files written by ingest hold exactly the chunk's bytes, whatever the size or alignment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cache.chunks import ChunkStore, WriteOutcome, address_of


@pytest.mark.parametrize("size", [1, 100, 4096, 4097, 4 * 1024 * 1024 + 1, 9 * 1024 * 1024 - 7])
def test_written_chunk_reads_back_exactly(tmp_path: Path, size: int) -> None:
    store = ChunkStore(tmp_path)
    backing = os.urandom(size + 3)
    chunk = memoryview(backing)[3:]  # a view at an odd address, like a slice of an upload piece
    address = address_of(chunk)
    assert store.write(address, chunk) is WriteOutcome.STORED
    assert store.path(address).stat().st_size == size
    assert store.load(address, size) == bytes(chunk)
    assert store.write(address, bytes(chunk)) is WriteOutcome.SHARED
    assert list(store.tmp_dir.iterdir()) == []
