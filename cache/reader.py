"""The read path: cached chunks from disk, missing ones from single-flight fills.

Cached chunks are verified whole (xxh3-128 through a read-only mapping, ~0.1 ms per
4 MiB) and then sent as sync ``os.pread`` pieces of ``PIECE_SIZE`` on the event loop
(fastest when in the page cache, see anchors/limits.md): a stream holds one piece, not
one chunk, so 32 streams of 1 GiB fit in well under 200 MiB. The loop is yielded once
per chunk so that one fast stream cannot starve the others. A corrupt chunk is dropped and
refilled, never sent. While one chunk is being sent, the next one of the range is
already being filled (``readahead`` chunks, 2 by default), so the upstream never idles
between chunks, and a store that limits each connection's rate (S3, a throttled http
server) is read over several: one cold client read 1 GiB behind 100 MiB/s per connection
in 2.95 s with two chunks ahead, 3.9 s with one (bench herd, "alone"). A range read fills only the chunks it overlaps.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import xxhash

from backends.base import PIECE_SIZE, ByteRange, ReadBackend

from .chunks import ChunkStore
from .errors import CacheError, CorruptChunk
from .fill import Fill, FillRunner, FillSpec
from .index import PendingWrites
from .manifest import Manifest

__all__ = ["Pins", "Reader"]

log = logging.getLogger("imgproxy.cache")


class Pins:
    """Chunks the pruner must not evict (being read, or written by an uncommitted ingest).

    Pins are per process: another process's pruner may still remove the file, which a
    reader sees as a miss (a chunk is read whole once opened, so never half-sent).
    Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pins: Counter[bytes] = Counter()

    def add(self, address: bytes) -> None:
        with self._lock:
            self._pins[address] += 1

    def remove(self, address: bytes) -> None:
        with self._lock:
            self._pins[address] -= 1
            if self._pins[address] <= 0:
                del self._pins[address]

    def snapshot(self) -> frozenset[bytes]:
        with self._lock:
            return frozenset(self._pins)


class Reader:
    """Streams image bytes through the cache. Runs on one event loop."""

    def __init__(self, store: ChunkStore, pending: PendingWrites, runner: FillRunner, pins: Pins,
                 spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]], *, readahead: int = 2) -> None:
        self.store = store
        self.pending = pending
        self.runner = runner
        self.pins = pins
        self._spawn = spawn
        self._fills: dict[str, Fill] = {}
        self.readahead = readahead  # chunks filled ahead of the one being sent

    @property
    def active_fills(self) -> int:
        return len(self._fills)

    def fills_in_flight(self) -> list[Fill]:
        """The fills running in this process now (for status reports; do not drive them)."""
        return list(self._fills.values())

    def _address(self, image_id: str, manifest: Manifest, index: int) -> bytes | None:
        return manifest.chunks[index] or self.pending.learned(image_id, index)

    def _spec(self, image_id: str, manifest: Manifest, index: int, source: ReadBackend, location: str) -> FillSpec:
        address = self._address(image_id, manifest, index)
        cacheable = index not in manifest.collisions and not self.pending.collides(image_id, index)
        if address is not None and cacheable:
            key = address.hex()
        else:
            key = f"{'c' if cacheable else 'n'}{xxhash.xxh3_64_hexdigest(image_id.encode())}-{index}"
        return FillSpec(key, image_id, index, address, manifest.chunk_range(index), source, location, cacheable)

    def fill(self, spec: FillSpec) -> Fill:
        """The fill bringing ``spec``'s chunk: the one in flight, or a new one."""
        fill = self._fills.get(spec.key)
        if fill is not None:
            self.pending.count("coalesced_waiters")
            return fill
        fill = Fill(spec)
        self._fills[spec.key] = fill
        self.pending.count("misses")

        async def run() -> None:
            try:
                await self.runner.run(fill)
            finally:
                if self._fills.get(spec.key) is fill:
                    del self._fills[spec.key]

        self._spawn(run())
        return fill

    def _open(self, address: bytes, length: int) -> int | None:
        self.pins.add(address)
        try:
            return self.store.open_verified(address, length)
        except CorruptChunk:
            log.error("cached chunk %s is corrupt; dropped, refilling from the store", address.hex())
            self.pending.dropped(address)
            self.pending.count("corrupt_chunks")
            return None
        finally:
            self.pins.remove(address)

    def _cached(self, image_id: str, manifest: Manifest, index: int) -> bool:
        address = self._address(image_id, manifest, index)
        return address is not None and index not in manifest.collisions and self.store.exists(address)

    async def read(self, image_id: str, manifest: Manifest, byte_range: ByteRange, source: ReadBackend,
                   location: str, *, count_hit: bool = True) -> AsyncIterator[bytes | memoryview]:
        """Yield bytes ``byte_range`` of the image in pieces of at most ``PIECE_SIZE``.

        Raises :class:`CacheError` (mid-stream) if the bytes cannot be delivered. The
        caller closes the iterator if it stops early; fills it started go on.
        """
        if byte_range.end > manifest.size:
            raise ValueError(f"range {byte_range} is past the end of the image ({manifest.size} bytes)")
        if byte_range.length == 0:
            return
        self.pending.hit(image_id, count_hit)
        cs = manifest.chunk_size
        first, last = byte_range.start // cs, (byte_range.end - 1) // cs
        ahead: dict[int, Fill] = {}
        for index in range(first, last + 1):
            span = manifest.chunk_range(index)
            lo = max(byte_range.start, span.start) - span.start
            hi = min(byte_range.end, span.end) - span.start
            fill = ahead.pop(index, None)
            for later in range(index + 1, min(last, index + self.readahead) + 1):
                if later not in ahead and not self._cached(image_id, manifest, later):
                    # Read-ahead: the next chunks' fills run while this one is sent.
                    ahead[later] = self.fill(self._spec(image_id, manifest, later, source, location))
            if fill is None:
                address = self._address(image_id, manifest, index)
                fd = None
                if address is not None and index not in manifest.collisions and not self.pending.collides(image_id, index):
                    fd = self._open(address, span.length)
                if fd is not None:
                    self.pending.touch(address)  # type: ignore[arg-type]
                    self.pending.count("hits")
                    self.pending.count("bytes_served", hi - lo)
                    try:
                        for pos in range(lo, hi, PIECE_SIZE):
                            piece = os.pread(fd, min(hi, pos + PIECE_SIZE) - pos, pos)
                            if len(piece) != min(hi, pos + PIECE_SIZE) - pos:
                                raise CacheError("cached chunk ended early", image_id=image_id, offset=span.start + pos)
                            yield piece
                    finally:
                        os.close(fd)
                    # Reads and sends of cached chunks never block on loopback: give the
                    # other requests a turn once per chunk, or one stream holds the loop.
                    await asyncio.sleep(0)
                    continue
                fill = self.fill(self._spec(image_id, manifest, index, source, location))
            async for view in fill.stream(lo, hi):  # views of the fill's buffer, not copies
                self.pending.count("bytes_served", len(view))
                yield view
