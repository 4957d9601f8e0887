"""LMDB write transactions, kept off the event loop.

A write transaction fsyncs when it commits, so one begun on the event loop stalls every
request of that process for a disk flush (and a long one, for its whole length). Writes go
to a :class:`DbWriter`, the one thread of a process that runs them in order; :func:`write_txn`
refuses to begin a write transaction in a thread that runs an event loop, so a write that
slips onto the loop fails loudly in tests instead of stalling in production.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import lmdb

__all__ = ["DbWriter", "LoopWriteError", "Write", "write_txn"]

T = TypeVar("T")


class Write(Protocol):
    """Runs ``fn(txn)`` in a write transaction on the writer thread; blocks until it commits."""

    def __call__(self, fn: Callable[[lmdb.Transaction], T], /) -> T: ...


class LoopWriteError(RuntimeError):
    """A write transaction was begun on a thread that runs an event loop."""


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def write_txn(env: lmdb.Environment) -> lmdb.Transaction:
    """``env.begin(write=True)``; raises :class:`LoopWriteError` on an event-loop thread."""
    if _on_loop():
        raise LoopWriteError("LMDB write transaction begun on the event loop; run it through the DbWriter")
    return env.begin(write=True)


class DbWriter:
    """The process's LMDB writer thread: write functions run there one at a time, in order.

    One per process, shared by the registry and the cache. ``fn`` must open and close its
    own transaction (a transaction belongs to the thread that began it).
    """

    def __init__(self) -> None:
        self._thread: int | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lmdb-writer", initializer=self._started)

    def _started(self) -> None:
        self._thread = threading.get_ident()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the writer thread; its exception is raised here."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the writer thread and wait for it: for worker threads and the CLI.

        On the writer thread itself ``fn`` runs inline (a write may start another).
        Raises :class:`LoopWriteError` on an event-loop thread, which must ``await``
        :meth:`run` instead of blocking for a commit.
        """
        if threading.get_ident() == self._thread:
            return fn(*args)
        if _on_loop():
            raise LoopWriteError("blocking LMDB write called on the event loop; await DbWriter.run instead")
        return self._pool.submit(fn, *args).result()

    def close(self) -> None:
        """Wait for queued writes, then stop the thread. Call once, at shutdown."""
        self._pool.shutdown(wait=True)
