"""The prefetch queue: image ids operators asked to have cached, persisted in LMDB.

Named database ``prefetch``: image id -> ``<Q`` time queued (µs). Survives restarts; an
image leaves the queue when it is fully cached, deleted, or dequeued.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import lmdb

from backends.base import ByteRange, ReadBackend

from .errors import CacheError
from .index import now_us
from .manifest import Manifest
from .txn import DbWriter, write_txn

__all__ = ["PrefetchQueue", "PrefetchResult", "Resolver", "prefetch_all"]

log = logging.getLogger("imgproxy.cache")

# image id -> (manifest, store, location), or None if the image is gone.
Resolver = Callable[[str], Awaitable[tuple[Manifest, ReadBackend, str] | None]]


@dataclass(frozen=True)
class PrefetchResult:
    cached: int = 0  # images now fully cached (left the queue)
    failed: int = 0  # stay queued for the next run
    dropped: int = 0  # the resolver knew them no more (deleted images): dequeued

_U64 = struct.Struct("<Q")


class PrefetchQueue:
    """Each method is one short transaction of its own (or the caller's ``txn``).

    Writes come in pairs: :meth:`add`, :meth:`remove` and :meth:`clear` block until the
    process's LMDB writer thread (``writer``, see :mod:`cache.txn`) committed them (for
    worker threads and the CLI; they refuse the event loop), and their ``_async`` twins
    await it on the loop.
    """

    def __init__(self, env: lmdb.Environment, writer: DbWriter) -> None:
        self.env = env
        self.writer = writer
        self.db = env.open_db(b"prefetch")

    def add(self, image_id: str) -> bool:
        """Queue ``image_id``; return False if it was already queued."""
        return self.writer.call(self._add, image_id)

    async def add_async(self, image_id: str) -> bool:
        return await self.writer.run(self._add, image_id)

    def _add(self, image_id: str) -> bool:
        with write_txn(self.env) as txn:
            return bool(txn.put(image_id.encode(), _U64.pack(now_us()), db=self.db, overwrite=False))

    def remove(self, image_id: str) -> bool:
        return self.writer.call(self._remove, image_id)

    async def remove_async(self, image_id: str) -> bool:
        return await self.writer.run(self._remove, image_id)

    def _remove(self, image_id: str) -> bool:
        with write_txn(self.env) as txn:
            return self.remove_in(txn, image_id)

    def remove_in(self, txn: lmdb.Transaction, image_id: str) -> bool:
        """Dequeue ``image_id`` in the caller's write transaction."""
        return bool(txn.delete(image_id.encode(), db=self.db))

    def items(self) -> list[str]:
        """Queued image ids, oldest first."""
        with self.env.begin() as txn:
            rows = [(_U64.unpack(bytes(v))[0], bytes(k).decode()) for k, v in txn.cursor(db=self.db)]
        return [image_id for _, image_id in sorted(rows)]

    def clear(self) -> int:
        return self.writer.call(self._clear)

    async def clear_async(self) -> int:
        return await self.writer.run(self._clear)

    def _clear(self) -> int:
        with write_txn(self.env) as txn:
            n = txn.stat(self.db)["entries"]
            txn.drop(self.db, delete=False)
        return int(n)


async def prefetch_all(image_ids: list[str], dequeue: Callable[[str], Awaitable[None]],
                       read: Callable[..., AsyncIterator[Any]], resolve: Resolver, concurrency: int) -> PrefetchResult:
    """Read every image of ``image_ids`` through ``read`` (the cache's), ``concurrency`` at a
    time; ``dequeue`` (off the loop) those now cached or gone."""
    sem = asyncio.Semaphore(concurrency)
    counts = {"cached": 0, "failed": 0, "dropped": 0}

    async def one(image_id: str) -> None:
        async with sem:
            try:
                found = await resolve(image_id)
            except Exception as exc:
                log.error("prefetch: cannot resolve image %s: %r", image_id, exc)
                counts["failed"] += 1
                return
            if found is None:
                await dequeue(image_id)
                counts["dropped"] += 1
                return
            manifest, source, location = found
            try:
                async for _ in read(image_id, manifest, ByteRange(0, manifest.size), source, location,
                                    count_hit=False):
                    pass
            except CacheError as exc:
                log.error("prefetch of image %s failed: %s", image_id, exc)
                counts["failed"] += 1
                return
            await dequeue(image_id)
            counts["cached"] += 1

    await asyncio.gather(*(one(i) for i in image_ids))
    return PrefetchResult(**counts)
