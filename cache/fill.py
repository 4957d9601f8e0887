"""Single-flight fills: one upstream read per missing chunk, shared by every reader.

In one process, readers of a missing chunk share one :class:`Fill` (its bytes so far in
memory, a wake-up event). Across processes sharing the cache directory, the fill of a
chunk is owned by whoever holds ``fills/<key>.lock`` (``flock``); the owner appends what
it reads upstream to ``fills/<key>.part`` (what came in, once per ``PART_INTERVAL`` at
most, and the rest at the end). A process that cannot take the lock tails the
``.part`` file (polling its size) into its own :class:`Fill` until the lock is free, then
takes the lock itself and finishes from the final chunk file, or, if the owner failed,
fetches the rest from the store. So N readers in any number of processes cause one
upstream read of each byte, and all of them stream bytes as they arrive. If the owner
makes no progress for ``stall_timeout`` (it wedged, holding the lock), the tailer reads
the rest from the store itself and serves it without caching.

A published chunk file never changes. The owner creates the ``.part`` file afresh
(``O_EXCL``, after removing any leftover: a crash between publishing a ``.part`` by
``link`` and removing its name leaves a ``.part`` that *is* a published chunk), writes
it (with ``O_DIRECT`` from the fill's buffer where it can: :mod:`cache.part_file`), fsyncs it
and links it into ``chunks/``; nothing ever opens an existing fill file for writing.

A fill runs as a task owned by the cache, not by a reader: a fill some reader demanded
goes on when that reader goes away (see :mod:`cache.fill_buffer` for read-ahead).
Upstream failures are retried with a ranged read from where the fill stopped
(``retries`` consecutive failures without progress); after that every waiter gets
:class:`UpstreamFailed`. If the cache cannot store the chunk (full, disk error) the
fill still streams to its waiters, it just keeps nothing. Disk reads, writes and
hashing run on worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, TypeVar

from backends.base import BackendError, BackendNotFound, ByteRange, read_into

from .chunks import ChunkStore, WriteOutcome
from .errors import CacheError, UpstreamCorrupt, UpstreamFailed
from .fill_buffer import Fill, FillSpec
from .index import PendingWrites
from .manifest import ADDRESS_SIZE
from .part_file import PartFile

__all__ = ["Fill", "FillSpec", "FillRunner", "run_for_fd", "try_lock", "unlock"]

T = TypeVar("T")

log = logging.getLogger("imgproxy.cache")

TAIL_POLL = 0.005  # seconds between looks at another process's .part file
PART_INTERVAL = 0.5  # seconds, at most, between writes of a running fill's .part file


def try_lock(path: Path) -> int | None:
    """Take the exclusive flock on ``path`` without waiting; return its fd, or ``None`` if held.

    The holder removes the path before closing (:func:`unlock`), so a lock taken on a
    file that no longer has that name is stale: refused, and the caller tries again.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        st = os.fstat(fd)
        now = os.stat(path)
        if (st.st_ino, st.st_dev) == (now.st_ino, now.st_dev):
            return fd
    except (BlockingIOError, FileNotFoundError):
        pass
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
            os.close(fd)
            raise
    os.close(fd)
    return None


def unlock(path: Path, fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.close(fd)


async def run_owned(executor: Executor, undo: Callable[[T], None], fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on ``executor``, for a result that holds something (a descriptor, a
    reservation). If the caller is cancelled meanwhile, ``undo(result)`` runs when ``fn``
    returns: the thread cannot be stopped, and nobody else would give the thing back."""
    future = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        def settle(done: asyncio.Future[T]) -> None:
            if not done.cancelled() and done.exception() is None:
                undo(done.result())

        future.add_done_callback(settle)
        raise


async def run_for_fd(executor: Executor, fn: Callable[..., int | None], *args: Any) -> int | None:
    """``fn(*args)`` on ``executor``: a descriptor it opened (closed if the caller is cancelled), or ``None``."""
    return await run_owned(executor, _close, fn, *args)


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


class FillRunner:
    """Runs fills for one :class:`ImageCache`: the owner/tailer protocol above.

    ``executor`` takes the fills' disk I/O; ``verifier`` their chunk loads (a fill hashes its chunk as it arrives).
    """

    def __init__(self, store: ChunkStore, pending: PendingWrites, executor: Executor, verifier: Executor, *,
                 retries: int, stall_timeout: float, reserve: Callable[[int], bool]) -> None:
        self.store = store
        self.pending = pending
        self.executor = executor
        self.verifier = verifier
        self.retries = retries
        self.stall_timeout = stall_timeout
        # A fill writes its .part file when it ends (one write on a worker thread: a hop per
        # piece cost a sixth of a cold fill's CPU), and on the way only as often as tailers
        # in other processes need to see progress, well within their stall_timeout.
        self.part_interval = min(PART_INTERVAL, stall_timeout / 4)
        self.reserve = reserve  # room for a chunk; released with pending.release
        self._last_full_log = -60.0

    def _log_full(self) -> None:
        # Once a minute at most: a full cache under load would otherwise log every chunk.
        now = time.monotonic()
        if now - self._last_full_log >= 60.0:
            self._last_full_log = now
            log.warning("cache is full (and the pruner has nothing to evict): serving from the store "
                        "without caching")

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def run(self, fill: Fill) -> None:
        """Drive ``fill`` to done or failed. Never raises but CancelledError (waiters see the error)."""
        spec = fill.spec
        reserved = False

        def unreserve(got: bool) -> None:
            if got:
                self.pending.release(fill.length)

        try:
            # On a worker thread: reserving may evict when the cache is full.
            reserved = spec.cacheable and await run_owned(self.executor, unreserve, self.reserve, fill.length)
            if not reserved:
                if spec.cacheable:
                    self._log_full()
                await self._fetch(fill, None)
                self._check_address(fill)
                self.pending.count("uncached_fills")
            else:
                await self._run_locked(fill)
            fill.finish()
        except asyncio.CancelledError:
            fill.fail(CacheError("fill stopped (the cache is closing, or nobody waits for it)",
                                 image_id=spec.image_id, offset=spec.span.start))
            raise
        except Exception as exc:
            error = exc
            if not isinstance(exc, CacheError):
                log.error("fill of chunk %d of image %s failed: %r", spec.index, spec.image_id, exc)
                error = UpstreamFailed(f"fill failed: {exc!r}", image_id=spec.image_id, offset=spec.span.start)
                error.__cause__ = exc
            self.pending.count("fill_failures")
            fill.fail(error)
        finally:
            if reserved:
                self.pending.release(fill.length)

    async def _run_locked(self, fill: Fill) -> None:
        lock_path = self.store.fills_dir / f"{fill.spec.key}.lock"
        part_path = self.store.fills_dir / f"{fill.spec.key}.part"
        tailing = False
        loop = asyncio.get_running_loop()
        progress_at = loop.time()
        while True:
            try:
                fd = try_lock(lock_path)
            except OSError as exc:
                log.error("cannot lock %s (%s); serving from the store without caching", lock_path, exc)
                await self._fetch(fill, None)
                self._check_address(fill)
                return
            if fd is not None:
                try:
                    await self._own(fill, part_path)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(part_path)
                    unlock(lock_path, fd)
                return
            if not tailing:
                tailing = True
                self.pending.count("coalesced_waiters")
            before = fill.filled
            data = await self._io(_read_part, part_path, fill.filled, fill.length - fill.filled)
            if data:
                fill.append(data)
            if fill.filled > before:
                progress_at = loop.time()
            elif loop.time() - progress_at >= self.stall_timeout:
                # The owner holds the lock but makes no progress (wedged, or stopped):
                # we cannot take its lock, so we read the rest ourselves and keep nothing.
                log.warning("fill of chunk %d of image %s: its owner made no progress for %.1f s; "
                            "reading from the store without caching", fill.spec.index, fill.spec.image_id,
                            self.stall_timeout)
                self.pending.count("tail_stalls")
                await self._fetch(fill, None)
                self._check_address(fill)
                return
            await asyncio.sleep(TAIL_POLL)

    async def _own(self, fill: Fill, part_path: Path) -> None:
        spec = fill.spec
        addr_path = part_path.with_suffix(".addr")
        # An address learned by another process's fill of this chunk is only in its memory
        # until its next index flush; it leaves the address beside the lock for us.
        known = spec.address if spec.address is not None else await self._io(_read_address, addr_path)
        if known is not None:
            try:
                data = await asyncio.get_running_loop().run_in_executor(
                    self.verifier, self.store.load, known, fill.length)
            except CacheError:
                data = None
            if data is not None:  # another process finished it
                if not data.startswith(fill.got):
                    raise UpstreamCorrupt("tailed bytes differ from the chunk", image_id=spec.image_id,
                                          offset=spec.span.start)
                fill.append(memoryview(data)[fill.filled:])
                fill.mark_stored(known)
                self.pending.touch(known)
                return
        part: PartFile | None
        try:
            part = await run_owned(self.executor, PartFile.close, PartFile.create, part_path, fill.aligned)
            if fill.filled:
                await self._io(part.catch_up, fill.got)
        except OSError as exc:
            log.error("cannot write %s (%s); serving from the store without caching", part_path, exc)
            part = None
        try:
            part = await self._fetch(fill, part)
            address = self._check_address(fill)
            fill.mark_verified()
            if part is None:
                return
            owned, part = part, None
            # The thread must be done with part_path before the caller removes it, even
            # if this task is cancelled meanwhile.
            future = asyncio.get_running_loop().run_in_executor(
                self.executor, self._publish, owned, part_path, address, fill.got)
            try:
                outcome = await asyncio.shield(future)
            except asyncio.CancelledError:
                await asyncio.wait([future])
                raise
        finally:
            if part is not None:
                part.close()
        self.pending.count("fills")
        if outcome is WriteOutcome.COLLISION:
            log.warning("chunk %s of image %s collides with a different cached chunk; not shared",
                        address.hex(), spec.image_id)
            self.pending.count("collisions")
            self.pending.learn(spec.image_id, spec.index, None)
            return
        if outcome is not None:
            self.pending.present(address, fill.length)
            self.pending.modified(spec.image_id)
            if spec.address is None:
                self.pending.learn(spec.image_id, spec.index, address)
                with contextlib.suppress(OSError):
                    await self._io(_write_address, addr_path, address)
            fill.mark_stored(address)

    def _publish(self, part: PartFile, part_path: Path, address: bytes, data: memoryview) -> WriteOutcome | None:
        try:
            try:
                part.finish(data)
            finally:
                part.close()
            return self.store.publish(part_path, address, data)
        except OSError as exc:
            log.error("cannot store chunk %s (%s); it stays uncached", address.hex(), exc)
            return None

    def _check_address(self, fill: Fill) -> bytes:
        address = fill.address()
        if fill.spec.address is not None and address != fill.spec.address:
            raise UpstreamCorrupt(
                f"store bytes of chunk {fill.spec.index} do not match the manifest",
                image_id=fill.spec.image_id, offset=fill.spec.span.start)
        return address

    async def _fetch(self, fill: Fill, part: PartFile | None) -> PartFile | None:
        """Read the rest of the chunk upstream into ``fill`` (and ``part``); return ``part``
        (``None`` if writing it failed)."""
        spec = fill.spec
        failures = 0
        loop = asyncio.get_running_loop()
        written_at = loop.time()
        while fill.filled < fill.length:
            start = spec.span.start + fill.filled
            # The store puts the bytes straight into the fill's buffer where it can.
            it = read_into(spec.source, spec.location, ByteRange(start, spec.span.end), fill.rest())
            progressed = False
            try:
                while fill.filled < fill.length:
                    try:
                        async with asyncio.timeout(self.stall_timeout):
                            count = await anext(it)
                    except StopAsyncIteration:
                        raise BackendError(f"store ended at {spec.span.start + fill.filled}") from None
                    if not count:
                        continue
                    fill.advance(count)
                    progressed = True
                    self.pending.count("bytes_upstream", count)
                    if part is not None and loop.time() - written_at >= self.part_interval:
                        written_at = loop.time()
                        try:
                            await self._io(part.catch_up, fill.got)
                        except OSError as exc:
                            log.error("cannot write fill file (%s); serving without caching", exc)
                            part.close()
                            part = None
            except BackendNotFound as exc:
                raise UpstreamFailed(str(exc), image_id=spec.image_id, offset=start) from exc
            except (BackendError, OSError, TimeoutError) as exc:
                failures = 1 if progressed else failures + 1
                if failures > self.retries:
                    raise UpstreamFailed(f"store failed after {self.retries} retries: {exc}",
                                         image_id=spec.image_id, offset=spec.span.start + fill.filled) from exc
                self.pending.count("upstream_retries")
                log.warning("store read of %s failed at %d (%s); retrying", spec.location,
                            spec.span.start + fill.filled, exc)
                await asyncio.sleep(min(0.02 * 2 ** failures, 1.0))
            finally:
                aclose = getattr(it, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
        return part


def _read_part(path: Path, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes of another process's fill file from ``offset`` (b"" if none)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def _read_address(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if len(data) == ADDRESS_SIZE else None


def _write_address(path: Path, address: bytes) -> None:
    tmp = path.with_suffix(".addr-tmp")
    tmp.write_bytes(address)
    os.replace(tmp, path)

