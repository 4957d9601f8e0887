"""The facade the service uses: :class:`ImageCache`.

One per worker process; several processes may share one cache directory and LMDB
environment (fills are single-flight across them, see :mod:`cache.fill`). Runs on one
event loop; blocking work goes to bounded thread pools (``io``: fills, ingests;
``verify``: verifying cached chunks; ``bg``: the loops' scans), so a slow audit never
delays a download and a verification never waits behind fills.

LMDB: named databases ``manifests``, ``chunks``, ``lru``, ``cache_meta``,
``cache_images``, ``prefetch``. Every write transaction runs on the process's
:class:`~cache.txn.DbWriter` thread (begun with :func:`~cache.txn.write_txn`, which refuses
the event loop). Methods that write come in pairs: ``x_async`` for the event loop, and
the blocking ``x`` for worker threads and the CLI (it raises
:class:`~cache.txn.LoopWriteError` on the event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from backends.base import ByteRange, ReadBackend

from . import cleaner, pruner, refs, report
from .admission import Admission
from .chunks import ChunkStore
from .cleaner import AuditResult, CleanResult
from .fill import FillRunner
from .index import ChunkIndex, PendingWrites
from .ingest import Ingest
from .manifest import Manifest, ManifestTable
from .prefetch import PrefetchQueue, PrefetchResult, Resolver, prefetch_all
from .pruner import PruneResult
from .file_slice import FileSlice
from .pins import Pins
from .reader import Reader
from .txn import DbWriter, write_txn
from .verified import VerifiedRanges

__all__ = ["ImageCache", "PrefetchResult"]

log = logging.getLogger("imgproxy.cache")

T = TypeVar("T")
MiB = 1024 * 1024


def _in_write_txn(env: lmdb.Environment, fn: Callable[[lmdb.Transaction], T]) -> T:
    with write_txn(env) as txn:
        return fn(txn)


class ImageCache:
    """Content-addressed chunk cache in front of the image stores. See the module docs."""

    def __init__(self, root: Path, env: lmdb.Environment, *, chunk_size: int, max_size: int,
                 high_watermark: float, low_watermark: float, upstream_retries: int,
                 audit_bytes_per_second: int, stale_temp_age: float, stall_timeout: float = 60.0,
                 flush_interval: float = 1.0, io_threads: int = 4, readahead_chunks: int = 2,
                 fill_read_chunks: int = 0,
                 max_fills: int = 32, fill_memory: int = 96 * MiB, writer: DbWriter | None = None) -> None:
        """``stall_timeout``: seconds without a byte before a store read (or a tailed fill of
        another process) counts as stalled. ``max_fills``/``fill_memory``: fills in flight
        and bytes of their buffers, at most (see :mod:`cache.admission`). ``writer``: the
        process's LMDB writer thread, shared with the registry (one of its own if none)."""
        self.chunk_size = chunk_size
        self.max_size = max_size
        self.high_watermark = high_watermark
        self.low_watermark = low_watermark
        self.audit_bytes_per_second = audit_bytes_per_second
        self.stale_temp_age = stale_temp_age
        self.flush_interval = flush_interval
        self.env = env
        self.store = ChunkStore(root)
        self.index = ChunkIndex(env)
        self.manifests = ManifestTable(env)
        self.pending = PendingWrites()
        self.pins = Pins()
        self.writer = writer if writer is not None else DbWriter()
        self._owns_writer = writer is None
        self.queue = PrefetchQueue(env, self.writer)  # image ids to prefetch
        self.admission = Admission(max_fills, fill_memory)
        self._io = ThreadPoolExecutor(io_threads, thread_name_prefix="cache-io")
        self._verify = ThreadPoolExecutor(2, thread_name_prefix="cache-verify")
        self._bg = ThreadPoolExecutor(2, thread_name_prefix="cache-bg")
        self.runner = FillRunner(self.store, self.pending, self._io, self._verify, retries=upstream_retries,
                                 stall_timeout=stall_timeout, reserve=self._reserve)
        self.verified = VerifiedRanges()  # chunks on disk verified lately: not hashed again per read
        self.reader = Reader(self.store, self.pending, self.runner, self.pins, self._spawn, verifier=self._verify,
                             admission=self.admission, readahead=readahead_chunks,
                             read_chunks=fill_read_chunks, verified=self.verified)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_flush = time.monotonic()
        self._flushing: asyncio.Task[None] | None = None
        self._flush_lock = threading.Lock()
        self._pruning: asyncio.Task[PruneResult] | None = None
        self._prune_lock: asyncio.Lock | None = None
        self._audit_cursor = b""
        self._closed = False

    # -- internals ------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("cache task failed: %r", task.exception())
        if not self._closed:
            self._after_activity()

    def _write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """``fn(txn)`` in a write transaction on the writer thread; blocks (not on the loop)."""
        return self.writer.call(lambda: _in_write_txn(self.env, fn))

    def _drop(self, fn: Callable[[lmdb.Transaction], list[bytes]]) -> int:
        """Run ``fn`` (it marks chunks absent and returns them) in a write transaction, then
        unlink their files; return how many it unlinked. Blocking; not on the loop.

        The bytes the transaction frees are held (counted as used) from before it commits
        until the files are gone: a concurrent write must not take room that old files
        still fill on disk."""
        with self.pending.holding() as hold:
            def run(txn: lmdb.Transaction) -> list[bytes]:
                before = self.index.meta(txn, "total")
                addresses = fn(txn)
                hold(before - self.index.meta(txn, "total"))
                return addresses

            return sum(self.store.remove(address) for address in self._write(run))

    def _total(self) -> int:
        with self.env.begin() as txn:
            return self.index.meta(txn, "total") + self.pending.pending_bytes()

    def _try_reserve(self, size: int) -> bool:
        with self.env.begin() as txn:
            committed = self.index.meta(txn, "total")
        return self.pending.reserve(size, self.max_size - committed)

    def _reserve(self, size: int) -> bool:
        """Reserve room for ``size`` more cached bytes; False if they do not fit even after
        evicting. The caller releases the reservation (``pending.release``) once its write is
        done. Blocking (it may flush the index and evict): call it on a worker thread."""
        if self.max_size <= 0:
            return False
        if self._try_reserve(size):
            return True
        # Full: count the batched index writes, then evict least recently used chunks down
        # to the low watermark, here, for the write that needs the room (an upload or fill
        # must not wait for the pruner loop, nor skip caching while old chunks could go).
        self.flush_access_times()
        if self._try_reserve(size):
            return True
        low = int(self.low_watermark * self.max_size)
        result = pruner.evict(self.env, self.index, self.pins.snapshot(), above=low, down_to=low,
                              drop=self._drop)
        if result.files:
            self.pending.count("evicted_chunks", result.files)
            self.pending.count("evicted_bytes", result.bytes)
        return self._try_reserve(size)

    def _after_activity(self) -> None:
        # Batch index writes: at most one flush per flush_interval, off the loop.
        if self._flushing is None and time.monotonic() - self._last_flush >= self.flush_interval:
            self._last_flush = time.monotonic()
            task = asyncio.get_running_loop().create_task(self.flush())
            self._flushing = task
            task.add_done_callback(lambda _: setattr(self, "_flushing", None))
        if self._pruning is None and self._total() > self.high_watermark * self.max_size:
            self._pruning = self._spawn(self.prune())
            self._pruning.add_done_callback(lambda _: setattr(self, "_pruning", None))

    async def _in_bg(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._bg, fn, *args)

    # -- manifests --------------------------------------------------------------

    def get_manifest(self, image_id: str) -> Manifest | None:
        """The image's manifest, or ``None``. Addresses learned by recent fills may lag."""
        with self.env.begin() as txn:
            return self.manifests.get(txn, image_id)

    def record_manifest(self, txn: lmdb.Transaction, image_id: str, manifest: Manifest) -> None:
        """Store ``manifest`` (replacing any) and reference its chunks, in the caller's write txn.

        Chunks only the replaced manifest referenced are evicted.
        """
        for address in refs.record(txn, self.manifests, self.index, image_id, manifest):
            self.store.remove(address)

    def put_manifest(self, image_id: str, manifest: Manifest) -> None:
        """:meth:`record_manifest` in a transaction of its own. Blocking; not on the loop."""
        self._write(lambda txn: self.record_manifest(txn, image_id, manifest))

    async def put_manifest_async(self, image_id: str, manifest: Manifest) -> None:
        await self.writer.run(self.put_manifest, image_id, manifest)

    def forget_image(self, image_id: str) -> None:
        """The image is gone: drop its manifest, queue entry and cache info, and the chunks
        no other image references. Blocking; not on the loop."""
        self.flush_access_times()  # addresses learned by fills must be decref'd too
        self.pending.forget_image(image_id)

        def forget(txn: lmdb.Transaction) -> list[bytes]:
            self.queue.remove_in(txn, image_id)
            return refs.forget(txn, self.manifests, self.index, image_id)

        self._drop(forget)

    async def forget_image_async(self, image_id: str) -> None:
        await self.writer.run(self.forget_image, image_id)

    def evict_image(self, image_id: str) -> PruneResult:
        """Remove the image's cached chunks that no other image shares (Glance's
        ``DELETE /v2/cache/{image_id}``). The manifest stays: later reads refill.
        Blocking; not on the loop."""
        pinned = self.pins.snapshot()
        self.flush_access_times()
        freed = 0

        def mark(txn: lmdb.Transaction) -> list[bytes]:
            nonlocal freed
            outcome = refs.evict_unshared(txn, self.manifests, self.index, image_id, pinned)
            removed, freed = outcome if outcome is not None else ([], 0)
            return removed

        return PruneResult(self._drop(mark), freed)

    async def evict_image_async(self, image_id: str) -> PruneResult:
        await self.settle_fills(image_id)
        return await self.writer.run(self.evict_image, image_id)

    async def settle_fills(self, image_id: str, timeout: float = 60.0) -> None:
        """Wait (at most ``timeout``) for this process's fills of the image to end. Call it
        before :meth:`evict_image`: a fill whose reader already has every byte may still be
        publishing its chunk, which would land in the cache after the eviction."""
        tasks = [fill.task for fill in self.reader.fills_in_flight()
                 if fill.spec.image_id == image_id and fill.task is not None and not fill.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    # -- bytes in and out ---------------------------------------------------------

    def open_ingest(self, image_id: str, *, keep_chunks: bool = True) -> Ingest:
        """Start hashing (and, with ``keep_chunks``, caching) an upload; see :class:`Ingest`.
        The caller finishes or aborts it, then records the manifest (:meth:`record_manifest`)
        with the image. An image stored in a local file store keeps no chunks: it is read
        from its own file (:mod:`cache.local_files`), so each uploaded byte is written once."""
        return Ingest(image_id, self.chunk_size, self.store, self.pending, self.pins, self._io, self._reserve,
                      keep_chunks=keep_chunks)

    async def read(self, image_id: str, manifest: Manifest, byte_range: ByteRange, source: ReadBackend,
                   location: str, *, count_hit: bool = True) -> AsyncIterator[bytes | memoryview]:
        """Yield ``byte_range`` of the image (pieces <= 1 MiB, ``bytes`` or ``memoryview``).

        Chunks on local disk (cached, or the image's file in a local store) are verified
        first; missing ones come from the fill already bringing them or a new one reading
        ``location`` from ``source``. Raises :class:`CacheError` (``UpstreamFailed``,
        ``UpstreamCorrupt``) mid-stream if the bytes cannot be delivered: the caller must
        then abort the response. Raises ``ValueError`` at once for a range past the end.
        Close the iterator if you stop early; fills go on for other readers.
        """
        async for piece in self._read(image_id, manifest, byte_range, source, location, count_hit, False):
            assert not isinstance(piece, FileSlice)
            yield piece

    async def read_slices(self, image_id: str, manifest: Manifest, byte_range: ByteRange, source: ReadBackend,
                          location: str) -> AsyncIterator[bytes | memoryview | FileSlice]:
        """:meth:`read`, but each chunk on local disk comes as one :class:`FileSlice`, valid
        until the iterator is resumed: for a sender that does not copy it (``sendfile``)."""
        async for piece in self._read(image_id, manifest, byte_range, source, location, True, True):
            yield piece

    async def _read(self, image_id: str, manifest: Manifest, byte_range: ByteRange, source: ReadBackend,
                    location: str, count_hit: bool, slices: bool) -> AsyncIterator[bytes | memoryview | FileSlice]:
        try:
            async for piece in self.reader.read(image_id, manifest, byte_range, source, location,
                                                count_hit=count_hit, slices=slices):
                yield piece
        finally:
            if not self._closed:
                self._after_activity()

    # -- background work ----------------------------------------------------------

    def flush_access_times(self) -> None:
        """Write batched index changes (accesses, hits, new/dropped chunks, learned
        addresses, stats) in one transaction. Blocking (not on the loop); thread-safe.
        Returns after every change made before the call is committed."""
        self.writer.call(self._flush)

    async def flush(self) -> None:
        """:meth:`flush_access_times` off the loop."""
        await self.writer.run(self._flush)

    def _flush(self) -> None:
        with self._flush_lock, self.pending.holding() as hold:
            batch = self.pending.take()
            try:
                with write_txn(self.env) as txn:
                    self.index.apply(txn, batch)
                    before = self.index.meta(txn, "total")
                    orphans = refs.apply_learned(txn, self.manifests, self.index, batch.learned)
                    hold(before - self.index.meta(txn, "total"))  # until the orphans' files are gone
            except lmdb.Error as exc:
                log.error("cannot write the cache index (%s); will retry", exc)
                self.pending.give_back(batch)
            else:
                self.pending.flushed(batch)
                for address in orphans:
                    self.store.remove(address)

    async def prune(self) -> PruneResult:
        """If over the high watermark, evict LRU chunks down to the low watermark."""
        return await self._evict(int(self.high_watermark * self.max_size), int(self.low_watermark * self.max_size))

    async def _evict(self, above: int, down_to: int) -> PruneResult:
        if self._prune_lock is None:
            self._prune_lock = asyncio.Lock()
        async with self._prune_lock:
            await self.flush()
            result: PruneResult = await self._in_bg(
                lambda: pruner.evict(self.env, self.index, self.pins.snapshot(),
                                     above=above, down_to=down_to, drop=self._drop))
            if result.files:
                self.pending.count("evicted_chunks", result.files)
                self.pending.count("evicted_bytes", result.bytes)
            return result

    async def clear_cache(self) -> PruneResult:
        """Evict every cached chunk not in use (manifests and the queue stay)."""
        result = await self._evict(-1, 0)

        def forget_hits() -> None:
            with write_txn(self.env) as txn:
                txn.drop(self.index.images_db, delete=False)

        await self.writer.run(forget_hits)
        return result

    async def clean(self, *, stale_age: float | None = None) -> CleanResult:
        """Start-up recovery and the cleaner loop's run; see :func:`cache.cleaner.clean`."""
        await self.flush()
        age = self.stale_temp_age if stale_age is None else stale_age
        result: CleanResult = await self._in_bg(
            lambda: cleaner.clean(self.env, self.index, self.store, stale_age=age, write=self._write))
        return result

    async def audit(self, max_bytes: int | None = None) -> AuditResult:
        """Re-hash up to ``max_bytes`` of cached chunks (default: 60 s worth at
        ``audit_bytes_per_second``; 0 rate = unlimited speed, default one full pass)."""
        rate = self.audit_bytes_per_second
        limit = max_bytes if max_bytes is not None else (rate * 60 if rate > 0 else 1 << 62)
        await self.flush()
        result, self._audit_cursor = await self._in_bg(
            lambda: cleaner.audit(self.env, self.index, self.store, start=self._audit_cursor,
                                  max_bytes=limit, bytes_per_second=rate, write=self._write))
        self.pending.count("corrupt_chunks", result.corrupt)
        return result  # type: ignore[no-any-return]

    # -- prefetch (the queue itself: ``self.queue``) ---------------------------------

    async def prefetch_pending(self, resolve: Resolver, concurrency: int) -> PrefetchResult:
        """Fill every queued image, ``concurrency`` at a time. ``resolve(image_id)`` gives
        (manifest, source, location), or ``None`` if the image is gone (it is dequeued).
        A fully cached image leaves the queue; a failed one stays for the next run."""
        return await prefetch_all(self.queue.items(), self.queue.remove_async, self.read, resolve, concurrency)

    # -- reporting ----------------------------------------------------------------

    def cached_images(self) -> list[dict[str, Any]]:
        """See :func:`cache.report.cached_images`. Cost grows with the number of manifests
        and chunks: for the admin API, not hot paths. Blocking; not on the loop."""
        self.flush_access_times()
        with self.env.begin() as txn:
            return report.cached_images(txn, self.manifests, self.index)

    async def cached_images_async(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.cached_images)

    def cached_image(self, image_id: str) -> dict[str, Any] | None:
        """One image's row as :meth:`cached_images` gives it (``size`` may be 0 here), or
        None when the cache has no manifest for it. Costs one pass over its chunks (and a
        flush of the batched index writes, which say what fills stored)."""
        self.flush_access_times()
        with self.env.begin() as txn:
            return report.image_row(txn, self.manifests, self.index, image_id)

    def stats(self) -> dict[str, int]:
        """Cache-wide figures, summed over all processes sharing the cache (``bytes_cached``,
        ``chunks`` and :data:`cache.report.COUNTERS`); plus this process's ``active_fills``,
        ``fill_bytes`` (their buffers), ``waiting_fills`` (readers waiting for admission) and
        ``queued``. Blocking; not on the loop."""
        self.flush_access_times()
        with self.env.begin() as txn:
            out = report.counters(txn, self.index)
            out["queued"] = txn.stat(self.queue.db)["entries"]
        out["active_fills"] = self.reader.active_fills
        out["fill_bytes"] = self.admission.bytes
        out["waiting_fills"] = self.admission.waiting
        return out

    async def stats_async(self) -> dict[str, int]:
        return await asyncio.to_thread(self.stats)

    async def wait_idle(self) -> None:
        """Wait until fills and loops started so far are done (readers may finish before
        the chunk they read is stored and indexed). For tests and graceful shutdown."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._flushing is not None:
            with contextlib.suppress(Exception):
                await self._flushing

    async def aclose(self) -> None:
        """Stop fills (their waiters get :class:`CacheError`), flush, release threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._flushing is not None:
            with contextlib.suppress(Exception):
                await self._flushing
        await self.flush()
        self._io.shutdown(wait=True)
        self._verify.shutdown(wait=True)
        self._bg.shutdown(wait=True)
        if self._owns_writer:
            self.writer.close()
