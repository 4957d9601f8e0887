"""A fill's part file: whole blocks go straight from the fill's page-aligned buffer with
O_DIRECT while the fill runs, the unaligned tail at the end; the file holds exactly the
chunk's bytes whatever sizes its pieces came in."""

from __future__ import annotations

import fcntl
import mmap
import os
import random
from pathlib import Path

import pytest

from cache.part_file import PartFile


def _pieces(total: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(min(rng.choice([1, 511, 4096, 5000, 65536, 100_003]), total - sum(sizes)))
    return sizes


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("length", [1, 4096, 300_001, 1 << 20])
def test_part_file_holds_the_chunk_whatever_the_piece_sizes(tmp_path: Path, aligned: bool, length: int) -> None:
    data = os.urandom(length)
    buf = mmap.mmap(-1, length)  # what a fill's pooled buffer is: an anonymous, page-aligned map
    view = memoryview(buf)
    path = tmp_path / "c.part"
    part = PartFile.create(path, aligned)
    filled = 0
    for size in _pieces(length, seed=length):
        view[filled:filled + size] = data[filled:filled + size]
        filled += size
        part.catch_up(view[:filled].toreadonly())
        on_disk = path.stat().st_size
        assert on_disk <= filled and path.read_bytes() == data[:on_disk]  # what a tailer sees is right
    part.finish(view.toreadonly())
    part.close()
    assert path.read_bytes() == data


def test_part_file_writes_direct_where_the_filesystem_allows(tmp_path: Path) -> None:
    try:
        os.close(os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
        allows = True
    except OSError:
        allows = False  # tmpfs: the part is written buffered there
    part = PartFile.create(tmp_path / "c.part", True)
    try:
        assert part.fd is not None
        assert bool(fcntl.fcntl(part.fd, fcntl.F_GETFL) & os.O_DIRECT) == allows
    finally:
        part.close()


def test_a_leftover_of_the_name_is_replaced_not_reused(tmp_path: Path) -> None:
    published = tmp_path / "chunk"
    published.write_bytes(b"published chunk")
    os.link(published, tmp_path / "c.part")  # a crash between link and unlink
    part = PartFile.create(tmp_path / "c.part", True)
    part.finish(memoryview(b"new"))
    part.close()
    assert published.read_bytes() == b"published chunk" and (tmp_path / "c.part").read_bytes() == b"new"
