"""LMDB write transactions, kept off the event loop.

A write transaction fsyncs when it commits, so one begun on the event loop stalls every
request of that process for a disk flush (and a long one, for its whole length). Writes go
to a :class:`DbWriter`, the one thread of a process that runs them in order; :func:`write_txn`
refuses to begin a write transaction in a thread that runs an event loop, so a write that
slips onto the loop fails loudly in tests instead of stalling in production.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import lmdb

__all__ = ["DbWriter", "LoopWriteError", "write_txn"]

T = TypeVar("T")


class LoopWriteError(RuntimeError):
    """A write transaction was begun on a thread that runs an event loop."""


def write_txn(env: lmdb.Environment) -> lmdb.Transaction:
    """``env.begin(write=True)``; raises :class:`LoopWriteError` on an event-loop thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return env.begin(write=True)
    raise LoopWriteError("LMDB write transaction begun on the event loop; run it through the DbWriter")


class DbWriter:
    """The process's LMDB writer thread: write functions run there one at a time, in order.

    One per process, shared by the registry and the cache. ``fn`` must open and close its
    own transaction (a transaction belongs to the thread that began it).
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lmdb-writer")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the writer thread; its exception is raised here."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        """Wait for queued writes, then stop the thread. Call once, at shutdown."""
        self._pool.shutdown(wait=True)
