"""VerifiedRanges: a file range is hashed once, then remembered while its file cannot have changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cache.chunks import address_of
from cache.verified import VerifiedRanges


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def file(tmp_path: Path) -> Path:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(3000))
    return path


def verify(memo: VerifiedRanges, path: Path, offset: int, length: int, address: bytes) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return memo.verify(fd, os.fstat(fd), offset, length, address)
    finally:
        os.close(fd)


def test_a_range_is_hashed_once_while_remembered(file: Path) -> None:
    memo = VerifiedRanges()
    good = address_of(file.read_bytes()[1000:2000])
    assert verify(memo, file, 1000, 1000, good)
    assert verify(memo, file, 1000, 1000, good)
    assert memo.hashed == 1
    # Another range of the same file is another verification.
    assert verify(memo, file, 0, 1000, address_of(file.read_bytes()[:1000]))
    assert memo.hashed == 2


def test_bad_bytes_fail_and_are_not_remembered(file: Path) -> None:
    memo = VerifiedRanges()
    assert not verify(memo, file, 0, 1000, address_of(b"something else"))
    assert not verify(memo, file, 0, 1000, address_of(b"something else"))
    assert memo.hashed == 2 and len(memo) == 0
    assert not verify(memo, file, 2500, 1000, address_of(file.read_bytes()[2500:]))  # past the end


def test_a_changed_file_is_hashed_again(file: Path) -> None:
    memo = VerifiedRanges()
    data = file.read_bytes()
    assert verify(memo, file, 0, 1000, address_of(data[:1000]))
    with file.open("r+b") as f:  # a write changes mtime and ctime
        f.seek(10)
        f.write(bytes([data[10] ^ 1]))
    os.utime(file, ns=(0, os.stat(file).st_mtime_ns + 1))  # even within one clock tick
    assert not verify(memo, file, 0, 1000, address_of(data[:1000]))
    assert memo.hashed == 2


def test_entries_expire_and_are_bounded(file: Path) -> None:
    clock = Clock()
    memo = VerifiedRanges(max_entries=2, ttl=10, clock=clock)
    data = file.read_bytes()
    assert verify(memo, file, 0, 100, address_of(data[:100]))
    clock.now = 9.9
    assert verify(memo, file, 0, 100, address_of(data[:100]))
    assert memo.hashed == 1
    clock.now = 10.0
    assert verify(memo, file, 0, 100, address_of(data[:100]))
    assert memo.hashed == 2
    for offset in (100, 200):
        assert verify(memo, file, offset, 100, address_of(data[offset:offset + 100]))
    assert len(memo) == 2  # the oldest went
    assert verify(memo, file, 0, 100, address_of(data[:100]))
    assert memo.hashed == 5
