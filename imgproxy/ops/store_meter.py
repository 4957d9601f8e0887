"""A read store that counts what its reads bring: bytes, time to first byte, duration.

Wraps the store a fill reads from (one ranged read per chunk, see :mod:`cache.fill`), so
fill latency and the bytes from each store are measured where they happen, without a hook
in the cache.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from backends import ByteRange, ReadBackend
from backends.base import RangeReader, open_reader, read_chunks

from .metrics import Metrics

__all__ = ["MeteredStore"]


class MeteredStore:
    """:class:`ReadBackend` around ``inner``, labelled ``store`` in the metrics. Closing it
    does not close ``inner``: the service's :class:`backends.Backends` owns that."""

    def __init__(self, inner: ReadBackend, store: str, metrics: Metrics) -> None:
        self.inner = inner
        self.read_chunks = read_chunks(inner)
        self._bytes = metrics.store_bytes.labels(store)
        self._first = metrics.store_first_byte.labels(store)
        self._whole = metrics.fill_seconds.labels(store)

    async def size(self, location: str) -> int:
        return await self.inner.size(location)

    async def read(self, location: str, byte_range: ByteRange | None = None) -> AsyncIterator[bytes]:
        """The inner read, counted. Closing this iterator closes the inner one."""
        meter = _Meter(self)
        pieces = self.inner.read(location, byte_range)
        try:
            async for piece in pieces:
                meter.got(len(piece))
                yield piece
            meter.done = True
        except GeneratorExit:  # a fill closes the read once it has its chunk's bytes
            meter.done = True
            raise
        finally:
            meter.close()
            aclose = getattr(pieces, "aclose", None)
            if aclose is not None:
                await aclose()

    async def open_reader(self, location: str, byte_range: ByteRange) -> RangeReader:
        """The inner store's :func:`backends.base.open_reader`, counted."""
        meter = _Meter(self)
        return _MeteredReader(await open_reader(self.inner, location, byte_range), meter)

    async def aclose(self) -> None:
        return None


class _Meter:
    """One read's figures: bytes, time to the first, and (for a read that ended or was
    closed after bytes came, not one that failed) its duration."""

    def __init__(self, store: MeteredStore) -> None:
        self._store = store
        self._start = time.perf_counter()
        self._first = True
        self.done = False

    def got(self, count: int) -> None:
        if self._first:
            self._store._first.observe(time.perf_counter() - self._start)
            self._first = False
        self._store._bytes.inc(count)

    def close(self) -> None:
        if self.done and not self._first:
            self._store._whole.observe(time.perf_counter() - self._start)
            self.done = False


class _MeteredReader:
    """A :class:`backends.base.RangeReader` that counts what its reads bring."""

    def __init__(self, inner: RangeReader, meter: _Meter) -> None:
        self._inner, self._meter = inner, meter

    async def into(self, view: memoryview) -> AsyncIterator[int]:
        try:
            async for count in self._inner.into(view):
                self._meter.got(count)
                yield count
        except GeneratorExit:  # a fill closes its reader once its chunk is in
            self._meter.done = True
            raise
        except BaseException:
            self._meter.done = False  # a failed read has no duration
            raise
        self._meter.done = True

    async def aclose(self) -> None:
        self._meter.close()
        await self._inner.aclose()
