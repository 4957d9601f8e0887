"""Test helpers for the cache: a fault-injecting store wrapper and image builders.

:class:`ScriptedStore` implements the project's own ``ReadBackend`` Protocol around a
real ``FileBackend``. It is not a mock of a library: it exists to count upstream reads
and to inject faults (failures mid-stream, stalls, slow pieces) that a real file store
cannot be told to produce.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from backends.base import BackendUnavailable, ByteRange
from backends.file import FileBackend

KiB = 1024
CHUNK = 64 * KiB


def image_bytes(size: int, seed: int) -> bytes:
    """Deterministic, incompressible-looking bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha512(f"{seed}-{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


class ScriptedStore:
    """A ``ReadBackend`` around a real store that records and can disturb reads.

    - ``piece``: re-slice the store's pieces into pieces this big;
    - ``delay``: sleep this long before each piece (a slow upstream);
    - ``fail_at``/``failures``: raise BackendUnavailable when a read reaches absolute
      offset ``fail_at``, ``failures`` times in all;
    - ``stall_at``/``stall``: sleep ``stall`` seconds once at that offset;
    - ``gate``/``gate_from``: reads from offset ``gate_from`` on wait for this event
      before their first piece (reads held open).

    ``active``/``peak_active`` count reads in progress (concurrent upstream requests).
    """

    def __init__(self, inner: FileBackend, *, piece: int = 16 * KiB, delay: float = 0.0,
                 fail_at: int | None = None, failures: int = 0, stall_at: int | None = None,
                 stall: float = 0.0, gate: asyncio.Event | None = None, gate_from: int = 0) -> None:
        self.inner = inner
        self.piece = piece
        self.delay = delay
        self.fail_at = fail_at
        self.failures = failures
        self.stall_at = stall_at
        self.stall = stall
        self.gate = gate
        self.gate_from = gate_from
        self.active = 0
        self.peak_active = 0
        self.requests: list[ByteRange | None] = []
        self.bytes_read = 0
        self.last_piece_at = 0.0  # loop time of the last piece handed out

    async def size(self, location: str) -> int:
        return await self.inner.size(location)

    async def read(self, location: str, byte_range: ByteRange | None = None) -> AsyncIterator[bytes]:
        self.requests.append(byte_range)
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        try:
            offset = byte_range.start if byte_range else 0
            if self.gate is not None and offset >= self.gate_from:
                await self.gate.wait()
            async for big in self.inner.read(location, byte_range):
                for i in range(0, len(big), self.piece):
                    piece = big[i:i + self.piece]
                    if self.fail_at is not None and self.failures > 0 and offset <= self.fail_at < offset + len(piece):
                        self.failures -= 1
                        raise BackendUnavailable("injected failure", location=location)
                    if self.stall_at is not None and offset <= self.stall_at < offset + len(piece):
                        self.stall_at = None
                        await asyncio.sleep(self.stall)
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    offset += len(piece)
                    self.bytes_read += len(piece)
                    self.last_piece_at = asyncio.get_running_loop().time()
                    yield piece
        finally:
            self.active -= 1

    async def aclose(self) -> None:
        pass


def put_object(store_dir: Path, image_id: str, data: bytes) -> str:
    path = store_dir / image_id
    path.write_bytes(data)
    return path.as_uri()


def chunk_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "chunks").rglob("*") if p.is_file())


def flip_byte(path: Path, offset: int = 100) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
    os.sync()
