"""A read store that counts what its reads bring: bytes, time to first byte, duration.

Wraps the store a fill reads from (one ranged read per chunk, see :mod:`cache.fill`), so
fill latency and the bytes from each store are measured where they happen, without a hook
in the cache.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from backends import ByteRange, ReadBackend
from backends.base import read_chunks, read_into

from .metrics import Metrics

__all__ = ["MeteredStore"]

T = TypeVar("T")


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

    def read(self, location: str, byte_range: ByteRange | None = None) -> AsyncIterator[bytes]:
        """The inner read, counted. Closing this iterator closes the inner one."""
        return self._metered(self.inner.read(location, byte_range), len)

    def read_into(self, location: str, byte_range: ByteRange, into: memoryview) -> AsyncIterator[int]:
        """The inner store's :func:`backends.base.read_into`, counted."""
        return self._metered(read_into(self.inner, location, byte_range, into), int)

    async def _metered(self, pieces: AsyncIterator[T], size: Callable[[T], int]) -> AsyncIterator[T]:
        start = time.perf_counter()
        first, done = True, False
        try:
            async for piece in pieces:
                if first:
                    self._first.observe(time.perf_counter() - start)
                    first = False
                self._bytes.inc(size(piece))
                yield piece
            done = True
        except GeneratorExit:  # a fill closes the read once it has its chunk's bytes
            done = True
            raise
        finally:
            if done and not first:
                self._whole.observe(time.perf_counter() - start)
            aclose = getattr(pieces, "aclose", None)
            if aclose is not None:
                await aclose()

    async def aclose(self) -> None:
        return None
