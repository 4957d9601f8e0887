"""Handing freed heap memory back to the OS when the data paths go quiet.

Image data moves through the heap in 1-4 MiB buffers (chunk pieces, fill buffers).
Once glibc has seen such buffers freed it serves them from its arenas instead of
fresh mappings, and arenas keep what a burst used: after a boot storm of 64 nodes the
service held ~230 MiB while idle, and started its next burst from there. When the last
data stream ends, :class:`IdleTrimmer` asks glibc (``malloc_trim``) to return the free
pages, on a worker thread and at most once per ``min_interval`` seconds. Without glibc
(musl, macOS) it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from typing import Any

__all__ = ["IdleTrimmer"]

log = logging.getLogger("imgproxy.memory")


def _malloc_trim() -> Any | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class IdleTrimmer:
    """Counts open data streams; trims the heap when the last one ends. Event-loop only."""

    def __init__(self, min_interval: float = 5.0) -> None:
        self.min_interval = min_interval
        self.active = 0
        self.trims = 0
        self._trim = _malloc_trim()
        self._last = -min_interval
        self._busy = False

    def begin(self) -> None:
        self.active += 1

    def end(self) -> None:
        self.active -= 1
        if self.active or self._trim is None or self._busy:
            return
        if time.monotonic() - self._last < self.min_interval:
            return
        self._busy = True
        self._last = time.monotonic()
        asyncio.get_running_loop().run_in_executor(None, self._run).add_done_callback(self._done)

    def _run(self) -> None:
        assert self._trim is not None
        self._trim(0)

    def _done(self, future: asyncio.Future[None]) -> None:
        self._busy = False
        self.trims += 1
        if not future.cancelled() and future.exception() is not None:
            log.warning("malloc_trim failed: %r", future.exception())
