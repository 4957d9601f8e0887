"""Single-flight fills: one upstream read per missing chunk, shared by every reader.

In one process, readers of a missing chunk share one :class:`Fill` (its bytes so far in
memory, a wake-up event). Across processes sharing the cache directory, the fill of a
chunk is owned by whoever holds ``fills/<key>.lock`` (``flock``); the owner appends what
it reads upstream to ``fills/<key>.part``. A process that cannot take the lock tails the
``.part`` file (polling its size) into its own :class:`Fill` until the lock is free, then
takes the lock itself and finishes from the final chunk file, or, if the owner failed,
fetches the rest from the store. So N readers in any number of processes cause one
upstream read of each byte, and all of them stream bytes as they arrive.

A fill runs as a task owned by the cache, not by a reader: it goes on when the reader
that started it goes away. Upstream failures are retried with a ranged read from where
the fill stopped (``retries`` consecutive failures without progress); after that every
waiter gets :class:`UpstreamFailed`. If the cache cannot store the chunk (full, disk
error) the fill still streams to its waiters, it just keeps nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from backends.base import PIECE_SIZE, BackendError, BackendNotFound, ByteRange, ReadBackend
from backends.direct_io import write_all

from .chunks import ChunkStore, WriteOutcome, address_of
from .errors import CacheError, UpstreamCorrupt, UpstreamFailed
from .index import PendingWrites
from .manifest import ADDRESS_SIZE

__all__ = ["Fill", "FillSpec", "FillRunner", "try_lock", "unlock"]

log = logging.getLogger("imgproxy.cache")

TAIL_POLL = 0.005  # seconds between looks at another process's .part file


@dataclass(frozen=True)
class FillSpec:
    """What to fill: chunk ``index`` of ``image_id`` (``span`` in the image) from ``source``."""

    key: str
    image_id: str
    index: int
    address: bytes | None
    span: ByteRange
    source: ReadBackend
    location: str
    cacheable: bool = True


class Fill:
    """The bytes of one chunk as they arrive, for any number of in-process waiters.

    Driven by one task (:class:`FillRunner`); all methods run on the event loop. The
    chunk's buffer is allocated whole and only ever appended to, so waiters are handed
    read-only views of it instead of copies (16 waiters on one fill would otherwise copy
    every byte 16 times on the event loop).
    """

    def __init__(self, spec: FillSpec) -> None:
        self.spec = spec
        self._buf = bytearray(spec.span.length)
        self._view = memoryview(self._buf)
        self.filled = 0  # bytes in so far
        self.done = False
        self.verified = False  # all bytes in and matching the known address
        self.error: BaseException | None = None
        self.waiters = 0  # readers streaming from it now
        self._event = asyncio.Event()

    @property
    def length(self) -> int:
        return self.spec.span.length

    def _notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    @property
    def got(self) -> memoryview:
        """The bytes in so far (read-only)."""
        return self._view[:self.filled].toreadonly()

    def append(self, data: bytes | memoryview) -> None:
        end = self.filled + len(data)
        if end > self.length:
            raise ValueError(f"fill of {self.spec.key}: {end} bytes for a chunk of {self.length}")
        self._view[self.filled:end] = data
        self.filled = end
        self._notify()

    def mark_verified(self) -> None:
        self.verified = True
        self._notify()

    def finish(self) -> None:
        self.done = self.verified = True
        self._notify()

    def fail(self, exc: BaseException) -> None:
        self.error = exc
        self._notify()

    async def stream(self, start: int, end: int) -> AsyncIterator[memoryview]:
        """:meth:`_stream`, counted in :attr:`waiters` while it runs."""
        self.waiters += 1
        pieces = self._stream(start, end)
        try:
            async for piece in pieces:
                yield piece
        finally:
            self.waiters -= 1
            await pieces.aclose()  # type: ignore[attr-defined]

    async def _stream(self, start: int, end: int) -> AsyncIterator[memoryview]:
        """Yield bytes ``start``..``end`` of the chunk as they arrive (pieces <= PIECE_SIZE).

        Raises the fill's error if it fails before ``end`` is reached. When the chunk's
        address is known, the last byte is held back until the whole chunk is verified,
        so bytes that do not match the manifest never make a complete response.
        """
        pos = start
        while pos < end:
            avail = min(self.filled, end)
            if avail == end and not self.verified and self.spec.address is not None:
                avail = end - 1
            if pos < avail:
                stop = min(avail, pos + PIECE_SIZE)
                piece = self._view[pos:stop].toreadonly()
                pos = stop
                yield piece
                continue
            if self.error is not None:
                raise self.error
            if self.done:
                raise CacheError(f"fill of {self.spec.key} ended short", image_id=self.spec.image_id,
                                 offset=self.spec.span.start + pos)
            await self._event.wait()
            if self.error is not None and not self.verified:
                raise self.error


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


class FillRunner:
    """Runs fills for one :class:`ImageCache`: the owner/tailer protocol above."""

    def __init__(self, store: ChunkStore, pending: PendingWrites, executor: Executor, *,
                 retries: int, stall_timeout: float, reserve: Callable[[int], bool]) -> None:
        self.store = store
        self.pending = pending
        self.executor = executor
        self.retries = retries
        self.stall_timeout = stall_timeout
        self.reserve = reserve  # room for a chunk; released with pending.release
        self._last_full_log = -60.0

    def _log_full(self) -> None:
        # Once a minute at most: a full cache under load would otherwise log every chunk.
        now = time.monotonic()
        if now - self._last_full_log >= 60.0:
            self._last_full_log = now
            log.warning("cache is full (and the pruner has nothing to evict): serving from the store "
                        "without caching")

    async def _io(self, fn: Callable[..., object], *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def run(self, fill: Fill) -> None:
        """Drive ``fill`` to done or failed. Never raises (waiters see the error)."""
        spec = fill.spec
        reserved = False
        try:
            # On a worker thread: reserving may evict when the cache is full.
            reserved = spec.cacheable and bool(await self._io(self.reserve, fill.length))
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
            fill.fail(CacheError("cache is closing", image_id=spec.image_id, offset=spec.span.start))
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
            self._tail(fill, part_path)
            await asyncio.sleep(TAIL_POLL)

    def _tail(self, fill: Fill, part_path: Path) -> None:
        # Sync on the loop: the .part file was just written, so it is in the page cache.
        try:
            fd = os.open(part_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            data = os.pread(fd, fill.length - fill.filled, fill.filled)
        finally:
            os.close(fd)
        if data:
            fill.append(data)

    async def _own(self, fill: Fill, part_path: Path) -> None:
        spec = fill.spec
        addr_path = part_path.with_suffix(".addr")
        # An address learned by another process's fill of this chunk is only in its memory
        # until its next index flush; it leaves the address beside the lock for us.
        known = spec.address if spec.address is not None else _read_address(addr_path)
        if known is not None:
            try:
                data = self.store.load(known, fill.length)
            except CacheError:
                data = None
            if data is not None:  # another process finished it
                if not data.startswith(fill.got):
                    raise UpstreamCorrupt("tailed bytes differ from the chunk", image_id=spec.image_id,
                                          offset=spec.span.start)
                fill.append(memoryview(data)[fill.filled:])
                self.pending.touch(known)
                return
        part_fd: int | None
        try:
            part_fd = os.open(part_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            if fill.filled:
                await self._io(write_all, part_fd, fill.got)
        except OSError as exc:
            log.error("cannot write %s (%s); serving from the store without caching", part_path, exc)
            part_fd = None
        try:
            part_fd = await self._fetch(fill, part_fd)
            address = self._check_address(fill)
            fill.mark_verified()
            if part_fd is None:
                return
            fd, part_fd = part_fd, None
            # The thread must be done with part_path before the caller removes it, even
            # if this task is cancelled meanwhile.
            future = asyncio.get_running_loop().run_in_executor(
                self.executor, self._publish, fd, part_path, address, fill.got)
            try:
                outcome = await asyncio.shield(future)
            except asyncio.CancelledError:
                await asyncio.wait([future])
                raise
        finally:
            if part_fd is not None:
                os.close(part_fd)
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
                    _write_address(addr_path, address)

    def _publish(self, fd: int, part_path: Path, address: bytes, data: memoryview) -> WriteOutcome | None:
        try:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            return self.store.publish(part_path, address, data)
        except OSError as exc:
            log.error("cannot store chunk %s (%s); it stays uncached", address.hex(), exc)
            return None

    def _check_address(self, fill: Fill) -> bytes:
        address = address_of(fill.got)
        if fill.spec.address is not None and address != fill.spec.address:
            raise UpstreamCorrupt(
                f"store bytes of chunk {fill.spec.index} do not match the manifest",
                image_id=fill.spec.image_id, offset=fill.spec.span.start)
        return address

    async def _fetch(self, fill: Fill, part_fd: int | None) -> int | None:
        """Read the rest of the chunk upstream into ``fill`` (and ``part_fd``); return ``part_fd``
        (``None`` if writing it failed)."""
        spec = fill.spec
        failures = 0
        while fill.filled < fill.length:
            start = spec.span.start + fill.filled
            it = spec.source.read(spec.location, ByteRange(start, spec.span.end))
            progressed = False
            try:
                while fill.filled < fill.length:
                    try:
                        async with asyncio.timeout(self.stall_timeout):
                            piece = await anext(it)
                    except StopAsyncIteration:
                        raise BackendError(f"store ended at {spec.span.start + fill.filled}") from None
                    piece = piece[:fill.length - fill.filled]
                    if not piece:
                        continue
                    fill.append(piece)
                    progressed = True
                    self.pending.count("bytes_upstream", len(piece))
                    if part_fd is not None:
                        try:
                            await self._io(write_all, part_fd, piece)
                        except OSError as exc:
                            log.error("cannot write fill file (%s); serving without caching", exc)
                            os.close(part_fd)
                            part_fd = None
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
        return part_fd


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

