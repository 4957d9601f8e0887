"""Chunk files written by ingest (O_DIRECT where the filesystem allows it) hold exactly the chunk's bytes."""

from __future__ import annotations

import os
import shutil
import tempfile
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
    fd = store.open_verified(address, size)  # the read path's mapped verify
    assert fd is not None
    try:
        assert os.pread(fd, size + 1, 0) == bytes(chunk)
    finally:
        os.close(fd)


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm (tmpfs) here to show the buffered fallback")
def test_chunks_on_a_filesystem_without_o_direct(tmp_path: Path) -> None:
    root = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="imgproxy-test-"))
    try:
        store = ChunkStore(root)
        chunk = os.urandom(4 * 1024 * 1024 + 5)
        address = address_of(chunk)
        assert store.write(address, chunk) is WriteOutcome.STORED
        assert store.load(address, len(chunk)) == chunk
    finally:
        shutil.rmtree(root, ignore_errors=True)
