"""The one LMDB environment under the data dir, and the threads that use it off the loop.

Point reads and one-page reads are cheap enough for the event loop. A write transaction
fsyncs when it commits, so writes run on the process's :class:`cache.txn.DbWriter`
(``write_txn`` refuses one begun on the loop). Scans that can touch many records run
on a :class:`ReaderPool`. A transaction belongs to the thread that began it: never hold
one across an ``await``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import lmdb

__all__ = ["open_env", "ReaderPool"]

MAX_DBS = 32
T = TypeVar("T")


def open_env(data_dir: Path, map_size: int) -> lmdb.Environment:
    """Open (creating if needed) ``<data_dir>/meta``.

    Several worker processes may open the same environment; LMDB serializes writers
    with its own lock file.
    """
    path = data_dir / "meta"
    path.mkdir(parents=True, exist_ok=True)
    return lmdb.open(
        str(path),
        map_size=map_size,
        max_dbs=MAX_DBS,
        # One flush per commit keeps committed metadata durable; writes are batched
        # by callers so this costs one disk flush per logical change.
        sync=True,
        metasync=True,
        readahead=False,
        max_readers=512,
        lock=True,
    )


class ReaderPool:
    """A few threads for reads that can touch many records (listings in an order no
    index holds, cache reports). Bounded: however many such requests arrive, at most
    ``threads`` scans run at once in this process; the rest queue, and the event loop
    and the other threads stay free for downloads.
    """

    def __init__(self, threads: int = 2) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="lmdb-reader")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on a reader thread; its exception is raised here."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        """Wait for running scans, then stop the threads. Call once, at shutdown."""
        self._pool.shutdown(wait=True)
