"""One store read for a run of neighbouring chunks: the read-ahead asks a remote store for
several chunks at once, not one request per chunk.

Every ranged GET costs a remote store per request (rclone's S3: ~0.7 ms of CPU each, Swift
several, on the 2 cores it shares with us here), and a remote store serves one long read
more cheaply than many short ones. A read-ahead fill therefore takes the next missing chunks
along: their fills share one read of ``[first.start, last.end)``. The fill of the first chunk
starts the read and takes its chunk's bytes, then hands the read, positioned at the boundary,
to the fill of the next chunk, and so on. Each fill still owns its chunk (its lock, its part
file, its verification); only the store read is shared, and every byte is read from the
store once.

The :class:`JointRead`'s views are the fills' ``source``. A view reads privately (its own
store read) whenever the joint read cannot serve it: a range other than its chunk's (a retry
from the middle), a second call, or the read broken before its turn: a fill before it failed,
was cancelled, or ended without reading (its chunk turned up on disk). A fill waits for its
turn only while the fills before it are alive, so none waits forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

from backends.base import ByteRange, RangeReader, ReadBackend, open_reader, read_into

__all__ = ["JointRead"]


class JointRead:
    """One read of adjacent ``sections`` of ``location`` from ``source``; ``views[i]`` is section ``i``'s.

    Runs on one event loop. ``spawn`` runs the closing of a store read left behind (the
    reader's task spawner, so shutdown waits for it). Tell it when each fill's task ends
    (:meth:`ended`).
    """

    def __init__(self, source: ReadBackend, location: str, sections: Sequence[ByteRange],
                 spawn: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        if len(sections) < 2 or any(a.end != b.start for a, b in zip(sections, sections[1:])):
            raise ValueError(f"not a run of adjacent ranges: {sections}")
        self.source, self.location = source, location
        self.sections = tuple(sections)
        self._spawn = spawn
        self._turn = 0  # the section whose view may take the read now
        self._alive = [True] * len(sections)
        self._broken = False
        self._reader: RangeReader | None = None  # the store read, positioned at the turn's section
        self._changed = asyncio.Event()
        self.handovers = 0  # sections served from the read another section started
        self.views = [_View(self, i) for i in range(len(sections))]

    def ended(self, index: int) -> None:
        """Section ``index``'s fill is gone (or reads elsewhere): if the read waits for it, nobody takes it."""
        self._alive[index] = False
        if self._turn == index:
            self._break()

    # -- the sections' reads --------------------------------------------------------------

    async def _section(self, index: int, into: memoryview) -> AsyncIterator[int]:
        """Section ``index``'s bytes put into ``into`` (see :class:`backends.base.RangeReader`)."""
        try:
            while not self._broken and self._turn < index:
                self._changed.clear()
                await self._changed.wait()
        except BaseException:
            self.ended(index)  # gone before its turn: the read stops at its boundary
            raise
        if self._broken:  # a section before this one will not get to its end
            async for count in read_into(self.source, self.location, self.sections[index], into):
                yield count
            return
        if index == 0:
            self._reader = await open_reader(self.source, self.location,
                                             ByteRange(self.sections[0].start, self.sections[-1].end))
        else:
            self.handovers += 1
        reader = self._reader
        assert reader is not None
        pos, done = self.sections[index].start, False
        counts = reader.into(into[:self.sections[index].length])
        try:
            async for count in counts:
                pos, done = self._step(index, pos, count)  # hands over before the last piece goes:
                yield count  # the fill closes this view once it has its last byte
        finally:
            if not done:
                self._break()
            await counts.aclose()  # type: ignore[attr-defined]

    def _step(self, index: int, pos: int, got: int) -> tuple[int, bool]:
        pos += got
        if pos < self.sections[index].end:
            return pos, False
        self._turn = index + 1
        if self._turn == len(self.sections) or not self._alive[self._turn]:
            self._break()  # the last section, or the next one's fill is gone: the rest stays unread
        self._changed.set()
        return pos, True

    def _break(self) -> None:
        self._broken = True
        reader, self._reader = self._reader, None
        if reader is not None:
            self._spawn(_aclose(reader))
        self._changed.set()


class _View:
    """What one fill sees as its store: the joint read for its own section, once; else a private read."""

    def __init__(self, joint: JointRead, index: int) -> None:
        self._joint = joint
        self._index = index
        self._used = False

    async def size(self, location: str) -> int:
        return await self._joint.source.size(location)

    def read(self, location: str, byte_range: ByteRange | None = None) -> AsyncIterator[bytes]:
        """A read of its own (fills read through :meth:`open_reader`)."""
        self._leave()
        return self._joint.source.read(location, byte_range)

    async def open_reader(self, location: str, byte_range: ByteRange) -> RangeReader:
        joint = self._joint
        first = not self._used
        if first and location == joint.location and byte_range == joint.sections[self._index]:
            self._used = True
            return _SectionReader(joint, self._index)
        self._leave()
        return await open_reader(joint.source, location, byte_range)

    def _leave(self) -> None:
        if not self._used:
            self._used = True
            self._joint.ended(self._index)  # reads elsewhere: the joint read must not wait for it

    async def aclose(self) -> None:
        """The store itself is closed by its owner."""


class _SectionReader:
    """A fill's reader of its section of the joint read (one :meth:`into`, of its section)."""

    def __init__(self, joint: JointRead, index: int) -> None:
        self._joint, self._index = joint, index

    def into(self, view: memoryview) -> AsyncIterator[int]:
        return self._joint._section(self._index, view)

    async def aclose(self) -> None:
        """The joint read closes the store read when it ends."""


async def _aclose(reader: RangeReader) -> None:
    with contextlib.suppress(Exception):
        await reader.aclose()
