"""The upload side: cut a byte stream into chunks, hash and cache them in one pass.

Each full chunk goes to worker threads without waiting for the previous one: md5 and
sha512 of the whole image (:class:`ImageDigests`: one thread per digest, in order,
up to ``DIGEST_DEPTH`` chunks queued, so the md5 lane, the slowest, never idles while
the caller receives the next piece); and xxh3-128 + the chunk write (content-addressed,
deduplicated after a byte comparison, fsynced), ``WRITE_DEPTH`` at a time. Memory stays
at a few chunks.

Nothing is referenced before :meth:`ImageCache.record_manifest` commits the manifest:
an aborted or crashed ingest leaves at most unreferenced cached chunks, which the
pruner may evict like any other.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

from .chunks import ChunkStore, WriteOutcome, address_of
from .digests import ImageDigests
from .errors import CacheError
from .index import PendingWrites
from .manifest import Manifest
from .pins import Pins

__all__ = ["Ingest"]

log = logging.getLogger("imgproxy.cache")

WRITE_DEPTH = 2  # chunk writes in flight per ingest
DIGEST_DEPTH = 6  # chunks queued for the digest lanes per ingest


class Ingest:
    """One image's bytes on their way in. Not safe for concurrent use: feed in order.

    ``feed`` (async) or ``feed_sync`` (blocking; from a worker thread) the body in any
    piece sizes, then ``finish()`` for the :class:`Manifest`, or ``abort()``. After
    either, the object is spent.
    """

    def __init__(self, image_id: str, chunk_size: int, store: ChunkStore, pending: PendingWrites,
                 pins: Pins, executor: Executor, reserve: Callable[[int], bool], *, keep_chunks: bool = True) -> None:
        self.image_id = image_id
        self.chunk_size = chunk_size
        self._store = store
        self._pending = pending
        self._pins = pins
        self._executor = executor
        self._reserve = reserve  # room for a chunk; released with pending.release
        self._digests = ImageDigests()
        self._buf = bytearray()
        self._addresses: dict[int, bytes] = {}
        self._next = 0  # index of the next chunk
        self._collisions: set[int] = set()
        self._stored: list[bytes] = []  # chunk files this ingest created
        self._pinned: list[bytes] = []  # pinned until the manifest is recorded or dropped
        self._digesting: deque[asyncio.Future[None]] = deque()
        self._writes: deque[asyncio.Future[None]] = deque()
        self._caching = keep_chunks  # False: addresses and digests only, no chunk files
        self._closed = False
        self.size = 0

    # -- the per-chunk work (worker threads) -------------------------------------

    def _cache_chunk(self, index: int, chunk: bytes | memoryview) -> None:
        address = address_of(chunk)
        self._addresses[index] = address
        if not self._caching:
            return
        if not self._reserve(len(chunk)):
            log.warning("cache is full; image %s is stored without caching", self.image_id)
            self._caching = False
            return
        try:
            self._write_chunk(index, address, chunk)
        finally:
            self._pending.release(len(chunk))

    def _write_chunk(self, index: int, address: bytes, chunk: bytes | memoryview) -> None:
        try:
            outcome = self._store.write(address, chunk)
        except OSError as exc:
            log.error("cannot cache chunks of image %s (%s); continuing without caching", self.image_id, exc)
            self._caching = False
            return
        if outcome is WriteOutcome.COLLISION:
            log.warning("chunk %d of image %s collides with a different cached chunk; not shared", index, self.image_id)
            self._pending.count("collisions")
            self._collisions.add(index)
            return
        self._pins.add(address)
        self._pinned.append(address)
        if outcome is WriteOutcome.STORED:
            self._stored.append(address)
        self._pending.present(address, len(chunk))

    def _process_sync(self, index: int, chunk: bytes | memoryview) -> None:
        self._digests.update(chunk)
        self._cache_chunk(index, chunk)

    async def _submit(self, chunk: bytes | memoryview) -> tuple[asyncio.Future[None], asyncio.Future[None]]:
        """Queue ``chunk``'s digests and its write; return both futures."""
        # Digests strictly in order on their own lanes; chunk writes (fsync-bound) up
        # to WRITE_DEPTH at once on the shared pool. Waiting here only bounds memory.
        index, self._next = self._next, self._next + 1
        while len(self._digesting) >= DIGEST_DEPTH:
            await self._digesting.popleft()
        digesting = asyncio.wrap_future(self._digests.submit(chunk))
        self._digesting.append(digesting)
        while len(self._writes) >= WRITE_DEPTH:
            await self._writes.popleft()
        loop = asyncio.get_running_loop()
        writing = loop.run_in_executor(self._executor, self._cache_chunk, index, chunk)
        self._writes.append(writing)
        return digesting, writing

    # -- feeding ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise CacheError("ingest is finished", image_id=self.image_id)

    async def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add the next piece of the image.

        Cache trouble (full, disk errors) only stops caching: the digests and chunk
        addresses are still computed, and the manifest is still complete. A ``bytes``
        piece is cut into chunks without copying (it is immutable, so the workers may
        hold on to it); other buffers are copied before this returns.
        """
        self._check_open()
        self.size += len(data)
        for chunk in self._cut(data):
            await self._submit(chunk)

    async def feed_held(self, data: memoryview) -> asyncio.Future[object]:
        """:meth:`feed` without copying a mutable ``data``: the caller keeps it unchanged
        until the returned future is done (every digest and write that reads it has ended;
        their errors are raised by :meth:`finish`, not by the future)."""
        self._check_open()
        self.size += len(data)
        readers: list[asyncio.Future[None]] = []
        for chunk in self._cut(data, held=True):
            readers += await self._submit(chunk)
        return asyncio.gather(*readers, return_exceptions=True)

    def _cut(self, data: bytes | bytearray | memoryview, *, held: bool = False) -> list[bytes | memoryview]:
        """The full chunks ``data`` completes; the rest waits in ``_buf``.

        Copies only chunks that straddle two pieces, and pieces that are mutable (unless
        ``held``: the caller keeps them unchanged): an upload fed in ``bytes`` (or held)
        multiples of the chunk size is hashed and written in place.
        """
        size = self.chunk_size
        view = memoryview(data).cast("B")
        out: list[bytes | memoryview] = []
        if self._buf:
            take = min(size - len(self._buf), len(view))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) < size:
                return out
            out.append(bytes(self._buf))
            self._buf.clear()
        if held or isinstance(data, bytes):
            whole = len(view) - len(view) % size
            out.extend(view[pos:pos + size] for pos in range(0, whole, size))
            view = view[whole:]
        while len(view) >= size:
            out.append(bytes(view[:size]))
            view = view[size:]
        self._buf += view
        return out

    def feed_sync(self, data: bytes | bytearray | memoryview) -> None:
        """Blocking :meth:`feed`, for callers on a worker thread. Do not mix with :meth:`feed`."""
        self._check_open()
        self.size += len(data)
        for chunk in self._cut(data):
            self._process_sync(self._next, chunk)
            self._next += 1

    async def _drain(self) -> None:
        """Wait for every queued digest and write; then raise the first error, if any.

        All are awaited even after a failure, so no worker still touches this ingest
        (e.g. storing a chunk) once an abort starts removing its chunks.
        """
        pending = list(self._digesting) + list(self._writes)
        self._digesting.clear()
        self._writes.clear()
        error: BaseException | None = None
        for future in pending:
            try:
                await future
            except Exception as exc:  # noqa: BLE001 - kept and re-raised after the rest settled
                error = error or exc
        if error is not None:
            raise error

    async def finish(self) -> Manifest:
        """Process the last partial chunk and return the image's manifest (not yet recorded)."""
        self._check_open()
        if self._buf:
            await self._submit(bytes(self._buf))
            self._buf.clear()
        await self._drain()
        return self._seal()

    def finish_sync(self) -> Manifest:
        self._check_open()
        if self._buf:
            self._process_sync(self._next, bytes(self._buf))
            self._next += 1
            self._buf.clear()
        return self._seal()

    def _seal(self) -> Manifest:
        self._closed = True
        self._digests.close()
        self._unpin()
        self._pending.modified(self.image_id)
        chunks = tuple(self._addresses[i] for i in range(self._next))
        return Manifest(self.size, self.chunk_size, chunks, self._digests.checksum,
                        self._digests.os_hash_value, frozenset(self._collisions))

    def _unpin(self) -> None:
        pinned, self._pinned = self._pinned, []
        for address in pinned:
            self._pins.remove(address)

    async def abort(self) -> None:
        """Discard the ingest: remove the chunk files it created. Safe to call twice."""
        try:
            await self._drain()
        except Exception:
            pass
        if self._closed:
            return
        self._closed = True
        self._digests.close()
        stored, self._stored = self._stored, []
        self._unpin()
        await asyncio.get_running_loop().run_in_executor(self._executor, self._drop, stored)

    def _drop(self, stored: list[bytes]) -> None:
        # Chunks created by this ingest have no references yet (they may if another
        # image recorded the same bytes meanwhile: the index then keeps them).
        for address in stored:
            self._store.remove(address)  # the file first: its bytes count until it is gone
            self._pending.dropped(address)
