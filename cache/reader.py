"""The read path: cached chunks (or the store's own local file) from disk, missing ones from fills.

A chunk on local disk (a chunk file of the cache, or the chunk's range of the image's
file in a local store, :mod:`cache.local_files`) is verified on a worker thread of the
verify pool (so a verification never queues behind fills' disk writes) before a byte of
it leaves: hashed once through a small buffer, then remembered for a while
(:mod:`cache.verified`), so concurrent and repeated reads of a hot image do not hash it
again. The verified chunk is then handed on as a :class:`FileSlice` (the HTTP layer
sends it with ``sendfile``, no copy through Python) or, for readers that want bytes, as
``os.pread`` pieces of ``PIECE_SIZE`` on the event loop (fast when in the page cache, see
anchors/limits.md): a stream holds one piece or one descriptor, not one chunk, so 32
streams of 1 GiB fit in well under 200 MiB. The next chunk is verified while one is
sent, and the loop is yielded once per chunk so that one fast stream cannot starve the
others. A corrupt cached chunk is dropped and refilled, never sent; a corrupt range of a
local store file has no other copy, so it fails the read (logged, counted).

While one chunk is being sent, the next ones of the range are already being filled
(``readahead`` chunks, 2 by default), so the upstream never idles between chunks, and a
store that limits each connection's rate is read over several (bench herd: 1 GiB behind
100 MiB/s per connection in 2.95 s with two chunks ahead, 3.9 s with one). A read-ahead
fill takes the next missing chunk along, both from one store read
(:mod:`cache.joint_read`). A range read fills only the chunks it overlaps.

Fills are admitted (:class:`cache.admission.Admission`): the chunk a reader sends now
waits for a grant; read-ahead starts only if a grant is free at once, and is dropped
when its reader leaves (see :mod:`cache.fill_buffer`).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import xxhash

from backends.base import PIECE_SIZE, ByteRange, ReadBackend, local_file, read_chunks

from .admission import Admission
from .chunks import ChunkStore
from .errors import CacheError, CorruptChunk, UpstreamCorrupt, UpstreamFailed
from .file_slice import FileSlice
from .fill import Fill, FillRunner, FillSpec, run_for_fd
from .index import PendingWrites
from .joint_read import JointRead
from .local_files import open_range
from .manifest import Manifest
from .pins import Pins
from .verified import VerifiedRanges

__all__ = ["Reader"]

log = logging.getLogger("imgproxy.cache")


class Reader:
    """Streams image bytes through the cache. Runs on one event loop.

    ``verifier`` runs the verification of chunks on disk, ``verified`` remembers it;
    ``admission`` bounds fills.
    """

    def __init__(self, store: ChunkStore, pending: PendingWrites, runner: FillRunner, pins: Pins,
                 spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]], *, verifier: Executor,
                 admission: Admission, readahead: int = 2, read_chunks: int = 0,
                 verified: VerifiedRanges | None = None) -> None:
        self.store = store
        self.verified = verified if verified is not None else VerifiedRanges()
        self.pending = pending
        self.runner = runner
        self.pins = pins
        self._spawn = spawn
        self._verifier = verifier
        self.admission = admission
        self._fills: dict[str, Fill] = {}
        self.readahead = readahead  # chunks filled ahead of the one being sent
        self.read_chunks = read_chunks  # chunks a read-ahead fill reads at once (0: the store's own)

    @property
    def active_fills(self) -> int:
        return len(self._fills)

    def fills_in_flight(self) -> list[Fill]:
        """The fills running in this process now (for status reports; do not drive them)."""
        return list(self._fills.values())

    def _address(self, image_id: str, manifest: Manifest, index: int) -> bytes | None:
        return manifest.chunks[index] or self.pending.learned(image_id, index)

    def _spec(self, image_id: str, manifest: Manifest, index: int, source: ReadBackend, location: str) -> FillSpec:
        address = self._address(image_id, manifest, index)
        cacheable = index not in manifest.collisions and not self.pending.collides(image_id, index)
        if address is not None and cacheable:
            key = address.hex()
        else:
            key = f"{'c' if cacheable else 'n'}{xxhash.xxh3_64_hexdigest(image_id.encode())}-{index}"
        return FillSpec(key, image_id, index, address, manifest.chunk_range(index), source, location, cacheable)

    # -- fills ------------------------------------------------------------------------

    def _start(self, spec: FillSpec, on_end: Callable[[], None] | None = None) -> Fill:
        """A new fill of ``spec`` under a grant the caller took (given back with its buffer);
        ``on_end`` is called when its task ends."""
        fill = Fill(spec, release=lambda: self.admission.release(spec.span.length), buffers=self.admission.buffers)
        self._fills[spec.key] = fill
        self.pending.count("misses")
        fill.task = self._spawn(self.runner.run(fill))

        def ended(_: asyncio.Task[None]) -> None:
            # A done callback, not a finally: a task cancelled before it ever ran runs no code.
            if self._fills.get(spec.key) is fill:
                del self._fills[spec.key]
            fill.end()
            if on_end is not None:
                on_end()

        fill.task.add_done_callback(ended)
        return fill

    def _join(self, spec: FillSpec, *, demand: bool) -> Fill | None:
        fill = self._fills.get(spec.key)
        if fill is not None:
            self.pending.count("coalesced_waiters")
            fill.claim(demand=demand)
        return fill

    async def _demand(self, spec: FillSpec, ahead: dict[int, Fill]) -> Fill:
        """The fill bringing ``spec``'s chunk, claimed for sending now; waits for a grant
        if it must start one (after letting go of ``ahead``: a waiting reader holds nothing)."""
        fill = self._join(spec, demand=True)
        if fill is not None:
            return fill
        size = spec.span.length
        if not self.admission.try_acquire(size):
            _drop(ahead)
            await self.admission.acquire(size)
            fill = self._join(spec, demand=True)  # another reader started it meanwhile
            if fill is not None:
                self.admission.release(size)
                return fill
        fill = self._start(spec)
        fill.claim(demand=True)
        return fill

    # -- chunks on local disk ------------------------------------------------------------

    async def _open_chunk_file(self, address: bytes, length: int) -> int | None:
        self.pins.add(address)
        try:
            return await run_for_fd(self._verifier, self.store.open_verified, address, length, self.verified)
        except CorruptChunk:
            log.error("cached chunk %s is corrupt; dropped, refilling from the store", address.hex())
            self.pending.dropped(address)
            self.pending.count("corrupt_chunks")
            return None
        except OSError as exc:
            log.error("cannot read cached chunk %s (%s); reading it from the store", address.hex(), exc)
            return None
        finally:
            self.pins.remove(address)

    def _cached(self, image_id: str, manifest: Manifest, index: int) -> bool:
        address = self._address(image_id, manifest, index)
        return address is not None and index not in manifest.collisions and self.store.exists(address)

    def _local(self, walk: _Walk, index: int) -> bool:
        """Whether chunk ``index`` is read from the image's local store file (its address,
        to verify it by, is known; a chunk of unknown address is filled, which learns it)."""
        return walk.local is not None and self._address(walk.image_id, walk.manifest, index) is not None

    async def _open_cached(self, image_id: str, manifest: Manifest, index: int) -> _Opened | None:
        address = self._address(image_id, manifest, index)
        if address is None or index in manifest.collisions or self.pending.collides(image_id, index):
            return None
        fd = await self._open_chunk_file(address, manifest.chunk_range(index).length)
        return None if fd is None else _Opened(fd, 0, address)

    async def _open_local(self, walk: _Walk, index: int) -> _Opened:
        """Chunk ``index``'s range of the local store file, verified. Raises UpstreamCorrupt
        (logged, counted: there is no other copy) or UpstreamFailed (unreadable)."""
        span = walk.manifest.chunk_range(index)
        address = self._address(walk.image_id, walk.manifest, index)
        assert walk.local is not None and address is not None
        try:
            fd = await run_for_fd(self._verifier, open_range, walk.local, span.start, span.length, address,
                                  self.verified)
        except OSError as exc:
            raise UpstreamFailed(f"cannot read the image's file in the store: {exc}", image_id=walk.image_id,
                                 offset=span.start) from exc
        if fd is None:
            log.error("image %s: bytes %d-%d of its store file %s do not match the manifest; the read is cut "
                      "(there is no other copy)", walk.image_id, span.start, span.end, walk.local)
            self.pending.count("corrupt_store_ranges")
            raise UpstreamCorrupt(f"bytes {span.start}-{span.end} of the image's file in the store are corrupt",
                                  image_id=walk.image_id, offset=span.start)
        return _Opened(fd, span.start, None)

    async def _open(self, walk: _Walk, index: int) -> _Opened | None:
        """Chunk ``index`` verified on local disk, or ``None`` if it must be filled."""
        if self._local(walk, index):
            return await self._open_local(walk, index)
        return await self._open_cached(walk.image_id, walk.manifest, index)

    # -- reading ------------------------------------------------------------------------

    async def read(self, image_id: str, manifest: Manifest, byte_range: ByteRange, source: ReadBackend,
                   location: str, *, count_hit: bool = True,
                   slices: bool = False) -> AsyncIterator[bytes | memoryview | FileSlice]:
        """Yield bytes ``byte_range`` of the image in pieces of at most ``PIECE_SIZE``; with
        ``slices``, chunks on local disk as one :class:`FileSlice` each instead.

        Raises :class:`CacheError` (mid-stream) if the bytes cannot be delivered. The
        caller closes the iterator if it stops early; the fill of the chunk it was
        sending goes on, its read-ahead is dropped.
        """
        if byte_range.end > manifest.size:
            raise ValueError(f"range {byte_range} is past the end of the image ({manifest.size} bytes)")
        if byte_range.length == 0:
            return
        self.pending.hit(image_id, count_hit)
        cs = manifest.chunk_size
        walk = _Walk(image_id, manifest, source, location, (byte_range.end - 1) // cs, local_file(source, location),
                     slices, self.read_chunks or read_chunks(source))
        try:
            for index in range(byte_range.start // cs, walk.last + 1):
                span = manifest.chunk_range(index)
                lo = max(byte_range.start, span.start) - span.start
                hi = min(byte_range.end, span.end) - span.start
                async for piece in self._chunk(walk, index, lo, hi):
                    yield piece
        finally:
            walk.close()

    def _ahead(self, walk: _Walk, index: int) -> None:
        """Start (or join) the fills of the chunks after ``index``, while grants are free."""
        # ``readahead`` store reads ahead: as many requests in flight, whatever their length.
        for later in range(index + 1, min(walk.last, index + self.readahead * walk.read_chunks) + 1):
            if not self._missing(walk, later):
                continue
            spec = self._spec(walk.image_id, walk.manifest, later, walk.source, walk.location)
            fill = self._join(spec, demand=False) or self._start_ahead(walk, spec)
            if fill is None:
                return
            walk.ahead[later] = fill

    def _missing(self, walk: _Walk, index: int) -> bool:
        return not (index in walk.ahead or self._local(walk, index) or self._cached(walk.image_id, walk.manifest, index))

    def _start_ahead(self, walk: _Walk, spec: FillSpec) -> Fill | None:
        """A new read-ahead fill of ``spec`` if a grant is free now. The next chunks, while
        missing too (and grants are free), up to ``read_chunks`` in all, are filled along
        with it from one store read."""
        if not self.admission.try_acquire(spec.span.length):
            return None
        run = [spec]
        for index in range(spec.index + 1, min(walk.last, spec.index + walk.read_chunks - 1) + 1):
            more = self._spec(walk.image_id, walk.manifest, index, walk.source, walk.location)
            if not self._missing(walk, index) or more.key in self._fills or not self.admission.try_acquire(
                    more.span.length):
                break
            run.append(more)
        if len(run) == 1:
            fill = self._start(spec)
        else:
            joint = JointRead(spec.source, spec.location, [one.span for one in run], self._spawn)
            fill = self._start(replace(spec, source=joint.views[0]), functools.partial(joint.ended, 0))
            for i, one in enumerate(run[1:], 1):
                walk.ahead[one.index] = self._start(replace(one, source=joint.views[i]), functools.partial(joint.ended, i))
                walk.ahead[one.index].claim(demand=False)
        fill.claim(demand=False)
        return fill

    def _verify_next(self, walk: _Walk, index: int) -> None:
        """Verify the next chunk on the verify pool while this one is sent, so a stream of
        chunks on disk never waits for a thread hop between them."""
        later = index + 1
        if later <= walk.last and later not in walk.opening and (
                self._local(walk, later) or self._cached(walk.image_id, walk.manifest, later)):
            walk.opening[later] = asyncio.ensure_future(self._open(walk, later))

    async def _chunk(self, walk: _Walk, index: int, lo: int,
                     hi: int) -> AsyncIterator[bytes | memoryview | FileSlice]:
        """Bytes ``lo``..``hi`` of chunk ``index``: from local disk, else from a fill."""
        fill = walk.ahead.pop(index, None)
        if fill is not None:
            fill.demand()
        pos = lo
        try:
            while pos < hi:
                if fill is None:
                    opening = walk.opening.pop(index, None)
                    opened = await (opening or self._open(walk, index))
                    if opened is not None:
                        async for piece in self._from_disk(walk, index, opened, pos, hi):
                            yield piece
                        return
                    fill = await self._demand(
                        self._spec(walk.image_id, walk.manifest, index, walk.source, walk.location), walk.ahead)
                self._ahead(walk, index)
                async for view in fill.stream(pos, hi):  # views of the fill's buffer, not copies
                    self.pending.count("bytes_served", len(view))
                    pos += len(view)
                    yield view
                # Short only if the buffer was let go: the chunk is cached now (or refilled).
                fill.unclaim()
                fill = None
        finally:
            if fill is not None:
                fill.unclaim()

    async def _from_disk(self, walk: _Walk, index: int, opened: _Opened, lo: int,
                         hi: int) -> AsyncIterator[bytes | memoryview | FileSlice]:
        """Bytes ``lo``..``hi`` of a verified chunk on disk; closes its descriptor."""
        try:
            self._ahead(walk, index)
            self._verify_next(walk, index)
            if opened.address is not None:
                self.pending.touch(opened.address)
                self.pending.count("hits")
            self.pending.count("bytes_served", hi - lo)
            if walk.slices:
                yield FileSlice(opened.fd, opened.base + lo, hi - lo)
            else:
                for start in range(lo, hi, PIECE_SIZE):
                    stop = min(hi, start + PIECE_SIZE)
                    piece = os.pread(opened.fd, stop - start, opened.base + start)
                    if len(piece) != stop - start:
                        raise CacheError("a verified chunk ended early", image_id=walk.image_id,
                                         offset=walk.manifest.chunk_range(index).start + start)
                    yield piece
        finally:
            os.close(opened.fd)
        # Reads and sends from disk hardly ever block on loopback: give the other requests
        # a turn once per chunk, or one stream holds the loop.
        await asyncio.sleep(0)


@dataclass(frozen=True, slots=True)
class _Opened:
    """A verified chunk on disk: its bytes start at ``base`` in ``fd``; ``address`` names a
    cached chunk file (``None``: the image's local store file)."""

    fd: int
    base: int
    address: bytes | None


@dataclass
class _Walk:
    """One read's state: the fills it holds as read-ahead, the chunks it is verifying ahead."""

    image_id: str
    manifest: Manifest
    source: ReadBackend
    location: str
    last: int  # index of the last chunk of the range
    local: Path | None  # the image's file in a local store, read in place of the cache
    slices: bool  # chunks on disk as FileSlices (else as bytes)
    read_chunks: int = 1  # chunks per store read
    ahead: dict[int, Fill] = field(default_factory=dict)
    opening: dict[int, asyncio.Future[_Opened | None]] = field(default_factory=dict)

    def close(self) -> None:
        """Let go of read-ahead claims and of verified chunks the read did not get to."""
        _drop(self.ahead)
        opening, self.opening = list(self.opening.values()), {}
        for future in opening:
            future.cancel()
            future.add_done_callback(_close_opened)


def _close_opened(future: asyncio.Future[_Opened | None]) -> None:
    if not future.cancelled() and future.exception() is None:
        opened = future.result()
        if opened is not None:
            os.close(opened.fd)


def _drop(ahead: dict[int, Fill]) -> None:
    """Let go of read-ahead claims (fills nobody else holds are cancelled)."""
    fills = list(ahead.values())
    ahead.clear()
    for fill in fills:
        fill.unclaim()
