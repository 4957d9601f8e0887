"""One sequential read of an object, shared by every ranged read of it: for stores that cannot seek.

Some stores do not serve byte ranges: Glance answers 400 ("Getting images randomly from this
store is not supported") for images in stores without random access, and some http servers
(Python's ``http.server``, nginx with ``max_ranges 0``) ignore ``Range`` and send the whole
object. Filling chunk ``k`` of such an object costs its first ``k`` chunks, so chunk-by-chunk
fills would read it about n²/2 times. Here one sequential read per object (a :class:`Tape`)
is spooled to an unlinked temp file as it arrives, and every ranged read of that object is
served from the spool as soon as its bytes are in: each byte is read upstream once, whatever
the number and order of ranged reads, and readers get bytes as they arrive.

:meth:`SequentialReads.read_range` decides per location: the first ranged read asks the store
for its range; reads arriving meanwhile wait for that answer's head (so a herd of fills never
opens one whole-object stream each). A store that serves the range keeps being asked for
ranges; one that ignores Range has its answer (the whole object) become the tape. The verdict
is remembered per location for ``verdict_ttl`` seconds (:class:`RangeVerdicts`), so the next
cold chunk does not ask again.

Memory stays at one piece per tape; the disk holds the object while readers use it, plus
``linger`` seconds (the chunk a reader asks for next still finds it), and the kernel frees
it with the file descriptor even after a crash. A stream that fails or stalls is reopened
with bounded retries and backoff; the bytes already spooled are skipped, not spooled again.
Across worker processes each process has its own tapes (their fills are shared per chunk,
so at most one tape per process reads the object).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from .base import PIECE_SIZE, BackendError, BackendNotFound, BackendUnavailable, ByteRange

__all__ = ["OpenRange", "OpenStream", "RangeIgnored", "RangeServed", "RangeVerdicts", "SequentialReads", "Tape"]

log = logging.getLogger(__name__)

# Opens a fresh stream of the whole object, from its first byte.
OpenStream = Callable[[], AsyncIterator[bytes]]


@dataclass(frozen=True, slots=True)
class RangeServed:
    """The store answered a ranged request with the range: ``body`` yields exactly it."""

    body: AsyncIterator[bytes]


@dataclass(frozen=True, slots=True)
class RangeIgnored:
    """The store did not serve the range: ``body`` is the whole object from byte 0 (Range
    ignored), or ``None`` (Range refused); ``size`` is the object's size if the answer told it."""

    body: AsyncIterator[bytes] | None
    size: int | None


# Sends one ranged request; returns once the answer's head is in (raises the store's BackendError).
OpenRange = Callable[[ByteRange], Awaitable[RangeServed | RangeIgnored]]


async def _close(it: AsyncIterator[bytes] | None) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


class Tape:
    """One object's sequential read into a spool file. Event-loop only; not thread-safe.

    :meth:`run` (one task, owned by :class:`SequentialReads`) appends the stream to the
    spool; :meth:`read` serves any range of it to any number of readers as bytes arrive.
    """

    def __init__(self, spool_dir: Path, size: int, open_stream: OpenStream, *, retries: int,
                 stall_timeout: float, first: AsyncIterator[bytes] | None = None) -> None:
        spool_dir.mkdir(parents=True, exist_ok=True)
        path = spool_dir / f"tape-{os.getpid()}-{id(self):x}.spool"
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.unlink(path)  # the bytes live as long as the descriptor, not a moment longer
        self.size = size
        self._open = open_stream
        self._first = first
        self.retries = retries
        self.stall_timeout = stall_timeout
        self.written = 0
        self.error: BackendError | None = None
        self.readers = 0
        self.last_use = time.monotonic()
        self._event = asyncio.Event()

    @property
    def done(self) -> bool:
        return self.written >= self.size

    def _notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def run(self) -> None:
        """Spool the whole object. Never raises: readers see :attr:`error`."""
        failures = 0
        try:
            while not self.done:
                it, self._first = self._first or self._open(), None
                start = self.written
                try:
                    await self._copy(it)
                except BackendNotFound as exc:
                    self.error = exc
                    return
                except (BackendError, OSError, TimeoutError) as exc:
                    # Consecutive failures without progress count; any progress resets them.
                    failures = 1 if self.written > start else failures + 1
                    if failures > self.retries:
                        self.error = BackendUnavailable(f"sequential read failed after {self.retries} retries: {exc}")
                        return
                    log.warning("sequential read failed at %d of %d (%s); reopening", self.written, self.size, exc)
                    await asyncio.sleep(min(0.05 * 2**failures, 2.0))
                finally:
                    await _close(it)
        except asyncio.CancelledError:
            self.error = BackendUnavailable("sequential read cancelled (shutting down)")
            raise
        finally:
            self._notify()

    async def _copy(self, it: AsyncIterator[bytes]) -> None:
        """Append ``it`` (a stream from byte 0) past what is already spooled, up to :attr:`size`."""
        pos = 0
        while not self.done:
            try:
                async with asyncio.timeout(self.stall_timeout):
                    piece = await anext(it)
            except StopAsyncIteration:
                raise BackendUnavailable(f"stream ended at {pos} of {self.size} bytes") from None
            end = pos + len(piece)
            if end > self.written:
                new = memoryview(piece)[max(0, self.written - pos):self.size - pos]
                if new:
                    await asyncio.to_thread(_pwrite_all, self._fd, new, self.written)
                    self.written += len(new)
                    self._notify()
            pos = end

    async def read(self, byte_range: ByteRange) -> AsyncIterator[bytes]:
        """Yield ``byte_range`` of the object (pieces <= PIECE_SIZE) as it is spooled.

        Raises the tape's :class:`BackendError` if it fails before the range is in.
        """
        if byte_range.end > self.size:
            raise BackendUnavailable(f"range {byte_range} is past the end ({self.size} bytes)")
        pos = byte_range.start
        while pos < byte_range.end:
            if self.written > pos:
                n = min(byte_range.end, self.written, pos + PIECE_SIZE) - pos
                # The bytes were just written: a page-cache read, cheap enough for the loop.
                piece = os.pread(self._fd, n, pos)
                if len(piece) != n:
                    raise BackendUnavailable("spool file ended early")
                pos += n
                yield piece
                continue
            if self.error is not None:
                raise self.error
            await self._event.wait()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


class RangeVerdicts:
    """Per location, whether its store serves byte ranges: found out by one read at a time,
    remembered ``ttl`` seconds. Event-loop only; not thread-safe.

    Entries are kept in the order they expire (one ``ttl`` for all), so expired ones are
    dropped from the front as new ones come: memory follows the locations read lately.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._known: dict[str, tuple[bool, float]] = {}  # location -> (serves ranges, expires at)
        self._probes: dict[str, asyncio.Event] = {}

    def get(self, location: str) -> bool | None:
        """Whether ``location``'s store serves ranges; ``None`` if not known (or forgotten)."""
        entry = self._known.get(location)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._known[location]
            return None
        return entry[0]

    async def turn(self, location: str) -> tuple[bool | None, asyncio.Event | None]:
        """``(verdict, None)`` once the verdict is known, or ``(None, probe)`` for the read
        that is to find it out, which must :meth:`settle` ``probe`` (with or without a verdict)."""
        while (verdict := self.get(location)) is None:
            running = self._probes.get(location)
            if running is None:
                probe = self._probes[location] = asyncio.Event()
                return None, probe
            await running.wait()
        return verdict, None

    def settle(self, location: str, probe: asyncio.Event | None, serves_ranges: bool | None) -> None:
        """Record a verdict (unless ``None``) and end ``probe`` (if it is the running one)."""
        if serves_ranges is not None:
            now = time.monotonic()
            self._known.pop(location, None)
            self._known[location] = (serves_ranges, now + self.ttl)
            while self._known:
                oldest, (_, expires) = next(iter(self._known.items()))
                if expires > now:
                    break
                del self._known[oldest]
        if probe is not None and self._probes.get(location) is probe:
            del self._probes[location]
            probe.set()


class SequentialReads:
    """The tapes of one backend, one per location at a time, and its :class:`RangeVerdicts`.
    Event-loop only.

    A failed tape is replaced by a fresh one on the next read; a finished or failed tape
    without readers is dropped after ``linger`` seconds.
    """

    def __init__(self, spool_dir: Path, *, retries: int = 3, stall_timeout: float = 30.0,
                 linger: float = 30.0, verdict_ttl: float = 600.0) -> None:
        self.spool_dir = spool_dir
        self.retries = retries
        self.stall_timeout = stall_timeout
        self.linger = linger
        self.verdicts = RangeVerdicts(verdict_ttl)
        self._tapes: dict[str, Tape] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._reap_at: asyncio.TimerHandle | None = None
        self.tapes_started = 0

    def _tape(self, location: str, size: int, open_stream: OpenStream,
              first: AsyncIterator[bytes] | None) -> tuple[Tape, bool]:
        tape = self._tapes.get(location)
        if tape is not None and tape.error is None and tape.size == size:
            return tape, False
        if tape is not None and tape.readers == 0:
            tape.close()
        tape = Tape(self.spool_dir, size, open_stream, retries=self.retries,
                    stall_timeout=self.stall_timeout, first=first)
        self._tapes[location] = tape
        self.tapes_started += 1
        task = asyncio.get_running_loop().create_task(tape.run(), name=f"tape-{location}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return tape, True

    async def read_range(self, location: str, byte_range: ByteRange, open_range: OpenRange,
                         open_stream: OpenStream, size: Callable[[], Awaitable[int]]) -> AsyncIterator[bytes]:
        """Yield ``byte_range`` of ``location`` (see the module docs for how it is read).

        ``open_range`` asks the store for a range; ``open_stream`` opens the whole object (for
        the tape's reopenings); ``size`` tells the object's size when an answer did not.
        Raises what those and the tape raise (:class:`BackendError`); the verdict is recorded
        only from an answer, never from a failure.
        """
        verdict, probe = await self.verdicts.turn(location)
        try:
            tape = self._tapes.get(location)
            if verdict is False or (tape is not None and tape.error is None):
                # A tape still running (or lingering) for it: its store ignores ranges.
                self.verdicts.settle(location, probe, False)
                total = tape.size if tape is not None and tape.error is None else await size()
                async for piece in self.read(location, total, byte_range, open_stream):
                    yield piece
                return
            answer = await open_range(byte_range)
            self.verdicts.settle(location, probe, isinstance(answer, RangeServed))
            if isinstance(answer, RangeServed):
                try:
                    async for piece in answer.body:
                        yield piece
                finally:
                    await _close(answer.body)
                return
            try:
                total = answer.size if answer.size is not None else await size()
            except BaseException:
                await _close(answer.body)
                raise
            async for piece in self.read(location, total, byte_range, open_stream, answer.body):
                yield piece
        finally:
            self.verdicts.settle(location, probe, None)

    async def read(self, location: str, size: int, byte_range: ByteRange, open_stream: OpenStream,
                   first: AsyncIterator[bytes] | None = None) -> AsyncIterator[bytes]:
        """Yield ``byte_range`` of ``location`` (``size`` bytes) from its tape, starting one
        if none runs (with ``first`` as its already-open stream; closed when not needed)."""
        tape, started = self._tape(location, size, open_stream, first)
        if first is not None and not started:
            await _close(first)
        tape.readers += 1
        try:
            async for piece in tape.read(byte_range):
                yield piece
        finally:
            tape.readers -= 1
            tape.last_use = time.monotonic()
            if self._tapes.get(location) is not tape and tape.readers == 0:
                tape.close()  # a failed tape replaced while this reader still used it
            self._reap()

    def _reap(self) -> None:
        self._reap_at = None
        now = time.monotonic()
        for location, tape in list(self._tapes.items()):
            if tape.readers == 0 and (tape.done or tape.error is not None):
                if now - tape.last_use >= self.linger:
                    tape.close()
                    del self._tapes[location]
                elif self._reap_at is None:
                    self._reap_at = asyncio.get_running_loop().call_later(self.linger, self._reap)

    async def aclose(self) -> None:
        if self._reap_at is not None:
            self._reap_at.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for tape in self._tapes.values():
            tape.close()
        self._tapes.clear()
