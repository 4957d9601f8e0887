"""Verified file ranges: hash a range of a file once, and remember it for a bounded time.

Bytes are verified (xxh3-128 against their chunk address) before they leave. Hashing
reads every byte once, through a small per-thread buffer that feeds the hash (one copy,
no mapping: a disk error is an ``OSError``, never a SIGBUS), and the result is
remembered by what identifies those bytes on disk: the file's device, inode, size,
mtime and ctime, the range, and the address it matched. A later open of the same file
whose ``fstat`` still says the same skips the hashing, so N clients reading one cached
image cost one verification per chunk, not N (the bytes then go out with ``sendfile``,
never through Python).

Why skipping is safe: the files verified here are never written once they have their
name. A chunk file is written under a temp name, fsynced and linked into place; an image
file of the file store is written under a temp name, fsynced and renamed into place;
either is only ever replaced by unlinking it and linking a new file (another inode, or
a reused inode number with another ctime). A write through the filesystem would change
mtime and ctime too. What ``fstat`` cannot see is the disk changing under the page
cache (bit rot read back after the verified pages were evicted): so an entry expires
after ``ttl`` seconds, after which the next open hashes again, and the cache auditor
re-hashes chunk files in the background regardless of this memo.

Thread-safe: one verification per range at a time (a second opener of the same range
waits for the first and then finds it remembered). Bounded: at most ``max_entries``,
the least recently verified go first.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import xxhash

__all__ = ["RangeHasher", "VerifiedRanges", "VERIFY_PIECE"]

# Verification reads a file in pieces this big: small enough to stay in the CPU's
# cache between the copy out of the page cache and the hash.
VERIFY_PIECE = 1024 * 1024
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux >= 5.14

_Key = tuple[int, int, int, int]  # st_dev, st_ino, offset, length
_Stamp = tuple[int, int, int, bytes]  # st_size, st_mtime_ns, st_ctime_ns, address


def _populate_huge(fd: int, offset: int, length: int) -> None:
    """Read the range into the page cache in huge folios if the kernel can. The mapping is
    never read from (no SIGBUS); every failure is ignored."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    try:
        with mmap.mmap(fd, length + offset - start, access=mmap.ACCESS_READ, offset=start) as view:
            view.madvise(mmap.MADV_HUGEPAGE)
            view.madvise(_MADV_POPULATE_READ)
    except (AttributeError, OSError, ValueError):
        pass  # no THP or populate here, or an I/O error the reads will report


class RangeHasher:
    """xxh3-128 of file ranges, read through one reusable buffer per thread. Thread-safe."""

    def __init__(self) -> None:
        self._local = threading.local()

    def digest(self, fd: int, offset: int, length: int) -> bytes | None:
        """xxh3-128 of bytes ``offset``..``offset + length`` of ``fd``; ``None`` if the file
        ends before. Raises ``OSError`` on a read error.

        The range is first brought into the page cache in 2 MiB folios where the kernel
        allows (``MADV_HUGEPAGE`` + ``MADV_POPULATE_READ`` on a mapping that is never
        touched), which every later copy out of it (this hash, or ``sendfile``) reads
        faster: over 128 chunks of 4 MiB, verify + the read path's preads cost 0.17 s from
        disk with plain reads, 0.07 s populated."""
        buf: memoryview | None = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = memoryview(bytearray(VERIFY_PIECE))  # lives as long as its thread
        _populate_huge(fd, offset, length)
        digest = xxhash.xxh3_128()
        pos = 0
        while pos < length:
            n = os.preadv(fd, [buf[:min(VERIFY_PIECE, length - pos)]], offset + pos)
            if n <= 0:
                return None
            digest.update(buf[:n])
            pos += n
        return digest.digest()


@dataclass
class _Gate:
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


class VerifiedRanges:
    """Which file ranges were verified recently; see the module docs for why that is safe."""

    def __init__(self, *, max_entries: int = 16384, ttl: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1 or ttl < 0:
            raise ValueError("max_entries must be positive and ttl not negative")
        self.max_entries = max_entries
        self.ttl = ttl
        self._clock = clock
        self._hasher = RangeHasher()
        self._lock = threading.Lock()
        self._entries: OrderedDict[_Key, tuple[_Stamp, float]] = OrderedDict()
        self._gates: dict[_Key, _Gate] = {}
        self.hashed = 0  # verifications that read the bytes (for tests and figures)

    def __len__(self) -> int:
        return len(self._entries)

    def _fresh(self, key: _Key, stamp: _Stamp) -> bool:
        entry = self._entries.get(key)
        if entry is None:
            return False
        if entry[0] != stamp or self._clock() >= entry[1]:
            del self._entries[key]
            return False
        return True

    def _remember(self, key: _Key, stamp: _Stamp) -> None:
        self._entries[key] = (stamp, self._clock() + self.ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def verify(self, fd: int, st: os.stat_result, offset: int, length: int, address: bytes) -> bool:
        """Whether bytes ``offset``..``offset + length`` of ``fd`` (whose ``fstat`` is ``st``)
        hash to ``address``: remembered, or hashed now (and remembered if they do).

        ``False`` for bad bytes or a file that ends early. Raises ``OSError`` on a read error.
        Blocking: call it on a worker thread.
        """
        key = (st.st_dev, st.st_ino, offset, length)
        stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, address)
        with self._lock:
            if self._fresh(key, stamp):
                return True
            gate = self._gates.setdefault(key, _Gate())
            gate.users += 1
        try:
            with gate.lock:
                with self._lock:
                    if self._fresh(key, stamp):
                        return True
                    self.hashed += 1
                if self._hasher.digest(fd, offset, length) != address:
                    return False
                with self._lock:
                    self._remember(key, stamp)
                return True
        finally:
            with self._lock:
                gate.users -= 1
                if gate.users == 0:
                    del self._gates[key]
