"""Admission control for fills: how many may run at once, and how many bytes their buffers hold.

Every fill holds its whole chunk in memory and reads it from the store, so unbounded
fills turn "many clients ask for a byte of many cold chunks" into chunk_size x N of memory
and upstream traffic. A fill starts only with a grant from :class:`Admission`: a reader
that needs a chunk now waits for one (first come, first served); read-ahead takes one
only if it is free at once, and never waits. The grant is given back when the fill's
buffer is let go (see :class:`cache.fill.Fill`), and the buffer itself to :attr:`Admission.buffers`
for the next fill (at most a quarter of ``max_bytes`` kept).
"""

from __future__ import annotations

import asyncio
from collections import deque

from .fill_buffer import BufferPool

__all__ = ["Admission"]


class Admission:
    """At most ``max_fills`` fills holding at most ``max_bytes`` of buffers, per process.

    A fill bigger than ``max_bytes`` on its own is admitted when no other fill holds a
    grant, so a bound smaller than a chunk slows fills down instead of stopping them.
    Runs on one event loop; not thread-safe.
    """

    def __init__(self, max_fills: int, max_bytes: int) -> None:
        if max_fills < 1 or max_bytes < 1:
            raise ValueError("admission bounds must be positive")
        self.max_fills = max_fills
        self.max_bytes = max_bytes
        self.fills = 0  # grants held
        self.bytes = 0  # bytes of the grants held
        self.peak_fills = 0
        self.peak_bytes = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self.buffers = BufferPool(max_bytes // 4)

    @property
    def waiting(self) -> int:
        """Readers waiting for a grant."""
        return len(self._waiters)

    def _fits(self, size: int) -> bool:
        if self.fills == 0:
            return True
        return self.fills < self.max_fills and self.bytes + size <= self.max_bytes

    def _take(self, size: int) -> None:
        self.fills += 1
        self.bytes += size
        self.peak_fills = max(self.peak_fills, self.fills)
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def try_acquire(self, size: int) -> bool:
        """A grant for ``size`` bytes if one is free now (nobody waits, and it fits)."""
        if self._waiters or not self._fits(size):
            return False
        self._take(size)
        return True

    async def acquire(self, size: int) -> None:
        """Wait for a grant for ``size`` bytes. Cancelling the wait takes none."""
        if self.try_acquire(size):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(size)  # granted just as the waiter left: give it back
            else:
                if entry in self._waiters:
                    self._waiters.remove(entry)
                self._wake()  # a smaller request behind it may fit now
            raise

    def release(self, size: int) -> None:
        """Give back a grant of ``size`` bytes."""
        self.fills -= 1
        self.bytes -= size
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            size, waiter = self._waiters[0]
            if waiter.done():  # cancelled meanwhile
                self._waiters.popleft()
                continue
            if not self._fits(size):
                return
            self._waiters.popleft()
            self._take(size)
            waiter.set_result(None)
