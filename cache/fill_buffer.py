"""One chunk's bytes as they arrive from the store, shared by every reader in the process.

A :class:`Fill` holds its whole chunk in a buffer granted by :class:`cache.admission.Admission`;
readers take a *claim* on it (the chunk they send now: a demand; a chunk further on:
read-ahead) and stream views of the buffer. The buffer is let go, and the grant given
back, as soon as nobody needs it in memory:
- the fill ended and no reader holds a claim (a reader that gets to the chunk later
  reads the chunk file).
A fill nobody demanded whose last claim goes (its reader left) is cancelled: read-ahead
nobody waits for is dropped. A demanded fill runs to the end even if every reader
leaves, so the next request finds the chunk cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import xxhash

from backends.base import PIECE_SIZE, ByteRange, ReadBackend

from .errors import CacheError

__all__ = ["BufferPool", "Fill", "FillSpec"]


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


class BufferPool:
    """Chunk buffers given back by fills, kept for the next fill (at most ``max_idle`` bytes).

    Why: a fresh multi-MiB buffer is fresh pages, and the kernel faults in and zeroes every one
    of them (measured ~0.3 s of CPU per GiB of cold fills, a tenth of the whole fill); a
    recycled one is already mapped. Buffers are anonymous maps, so they start page-aligned.
    A buffer given back may still be in use: pieces (views of it) a response is sending, a
    thread finishing a write. It is handed out again only once nothing but the pool holds
    it, so no reader ever sees its bytes change. Runs on one event loop; not thread-safe.
    """

    def __init__(self, max_idle: int) -> None:
        self.max_idle = max_idle
        self.kept_bytes = 0
        self.reused = 0  # buffers handed out again
        self._kept: deque[mmap.mmap] = deque()  # oldest first

    def take(self, size: int) -> mmap.mmap:
        """A buffer of exactly ``size`` bytes (``size`` > 0), recycled if one is free; contents undefined."""
        for buf in self._kept:
            # Every memoryview of ``buf`` (and every slice of one) holds a reference to it.
            # Free: the deque's, this loop variable's and getrefcount's own argument, no more.
            if len(buf) == size and sys.getrefcount(buf) == 3:
                self._kept.remove(buf)
                self.kept_bytes -= size
                self.reused += 1
                return buf
        return mmap.mmap(-1, size)

    def give(self, buf: mmap.mmap) -> None:
        """Keep ``buf`` for a later fill (the oldest kept ones are let go beyond ``max_idle``)."""
        self._kept.append(buf)
        self.kept_bytes += len(buf)
        while self.kept_bytes > self.max_idle:
            self.kept_bytes -= len(self._kept.popleft())


class Fill:
    """The bytes of one chunk as they arrive, for any number of in-process readers.

    Driven by one task (``task``, see :class:`cache.fill.FillRunner`); all methods run on
    the event loop. The buffer is allocated whole and only ever appended to, so readers
    are handed read-only views of it instead of copies. ``release`` is called once, when
    the buffer is let go (it gives back the admission grant).
    """

    def __init__(self, spec: FillSpec, release: Callable[[], None] | None = None,
                 buffers: BufferPool | None = None) -> None:
        self.spec = spec
        self._buffers = buffers
        self._buf: bytearray | mmap.mmap | None
        if buffers is not None and spec.span.length:
            self._buf = buffers.take(spec.span.length)
        else:
            self._buf = bytearray(spec.span.length)
        self._view: memoryview | None = memoryview(self._buf)
        self._release = release
        self.filled = 0  # bytes in so far
        self.done = False
        self.verified = False  # all bytes in and matching the known address
        self.stored: bytes | None = None  # the address it is cached under, once it is
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None
        self.claims = 0  # readers holding it (sending it now, or holding it as read-ahead)
        self.streaming = 0  # readers in the middle of sending it
        self.demanded = False  # some reader needed it now: it runs to the end
        self.ended = False  # its task is over
        self._event = asyncio.Event()
        # The chunk address, hashed as the bytes arrive: xxh3 of a 1 MiB piece costs the
        # loop less than a hop to a thread for the whole chunk at the end, and the last
        # byte is released as soon as it is in.
        self._hash = xxhash.xxh3_128()

    @property
    def waiters(self) -> int:
        """Readers sending its bytes now (for the status page)."""
        return self.streaming

    @property
    def length(self) -> int:
        return self.spec.span.length

    @property
    def released(self) -> bool:
        """The buffer is gone: read the chunk from the cache (``stored``) or fill it again."""
        return self._view is None

    def _notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    @property
    def aligned(self) -> bool:
        """Its buffer is page-aligned (a pooled map), so its blocks can be written with ``O_DIRECT``."""
        return isinstance(self._buf, mmap.mmap)

    @property
    def got(self) -> memoryview:
        """The bytes in so far (read-only). Only while the fill runs (the buffer is held)."""
        assert self._view is not None, "fill buffer already released"
        return self._view[:self.filled].toreadonly()

    def append(self, data: bytes | memoryview) -> None:
        """Copy ``data`` in after the bytes in so far."""
        if self.filled + len(data) > self.length:
            raise ValueError(f"fill of {self.spec.key}: {self.filled + len(data)} bytes for a chunk of {self.length}")
        self.rest()[:len(data)] = data
        self.advance(len(data))

    def rest(self) -> memoryview:
        """The buffer past the bytes in so far, for a store to put the next bytes in; then
        :meth:`advance`. Readers never see it before that (they read up to ``filled``)."""
        assert self._view is not None, "fill buffer already released"
        return self._view[self.filled:]

    def advance(self, count: int) -> None:
        """``count`` more bytes were put in at :meth:`rest`."""
        end = self.filled + count
        if end > self.length:
            raise ValueError(f"fill of {self.spec.key}: {end} bytes for a chunk of {self.length}")
        assert self._view is not None, "fill buffer already released"
        self._hash.update(self._view[self.filled:end])
        self.filled = end
        self._notify()

    def address(self) -> bytes:
        """The chunk address (xxh3-128) of the bytes in so far."""
        return self._hash.digest()

    def mark_verified(self) -> None:
        self.verified = True
        self._notify()

    def mark_stored(self, address: bytes) -> None:
        self.stored = address

    def finish(self) -> None:
        self.done = self.verified = True
        self._notify()

    def fail(self, exc: BaseException) -> None:
        self.error = exc
        self._notify()

    # -- claims and the buffer's lifetime -----------------------------------------

    def claim(self, *, demand: bool) -> None:
        self.claims += 1
        self.demanded = self.demanded or demand

    def demand(self) -> None:
        """A claim held as read-ahead is now the chunk its reader sends."""
        self.demanded = True

    def unclaim(self) -> None:
        self.claims -= 1
        if self.claims == 0 and not self.ended and not self.demanded and self.task is not None:
            self.task.cancel()  # read-ahead whose reader left: nobody waits for it
        self._maybe_release()

    def end(self) -> None:
        """The fill's task is over (finished, failed or cancelled)."""
        self.ended = True
        if not self.done and self.error is None:
            self.fail(CacheError("fill stopped", image_id=self.spec.image_id, offset=self.spec.span.start))
        self._maybe_release()

    def _maybe_release(self) -> None:
        if not self.ended or self.streaming or self._view is None:
            return
        if self.claims:
            # Its readers can get these bytes nowhere else, or only from disk: a cold fill
            # writes its chunk file past the page cache (O_DIRECT), so a reader sending it
            # from the file would read every byte back from the disk.
            return
        buf, view = self._buf, self._view
        self._view = self._buf = None  # freed once the views handed out are gone too
        with contextlib.suppress(BufferError):  # a thread still writes from it: then it is not reused
            view.release()
        del view
        if self._buffers is not None and isinstance(buf, mmap.mmap):
            self._buffers.give(buf)
        del buf
        self._notify()
        if self._release is not None:
            release, self._release = self._release, None
            release()

    # -- reading --------------------------------------------------------------------

    async def stream(self, start: int, end: int) -> AsyncIterator[memoryview]:
        """Yield bytes ``start``..``end`` of the chunk as they arrive (pieces <= PIECE_SIZE).

        Raises the fill's error if it fails before ``end`` is reached. When the chunk's
        address is known, the last byte is held back until the whole chunk is verified,
        so bytes that do not match the manifest never make a complete response. Returns
        early (the caller counts what it got) if the buffer is let go first: the chunk is
        then in the cache. Call it holding a claim.
        """
        self.streaming += 1
        try:
            pos = start
            while pos < end:
                if self._view is None:  # let go before this reader began (it cannot go mid-stream)
                    if self.error is not None and not self.verified:
                        raise self.error
                    return
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
        finally:
            self.streaming -= 1
            self._maybe_release()
