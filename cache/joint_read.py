"""One store read for two neighbouring chunks: the read-ahead asks a remote store for 8 MiB, not 4.

Every ranged GET costs a remote store per request (rclone's S3: ~0.7 ms of CPU each, on the
2 cores it shares with us; Swift more), and a fill costs imgproxy per chunk. A read-ahead fill
of chunk ``k`` and the fill of chunk ``k + 1`` started with it therefore share one read of
``[k.start, (k+1).end)``: the lead fill takes the first chunk's bytes, then hands the same
read, positioned at the boundary, to the follower. Each fill still owns its chunk (its lock,
its part file, its verification); only the store read is shared, and every byte is still read
from the store once.

The two :class:`JointRead` views are the fills' ``source``. A view reads privately (its own
store read) whenever the joint read cannot serve it: a range other than its chunk's (a retry
from the middle), the lead gone before the boundary (failed, cancelled, or not reading because
its chunk turned up on disk), or a second call. The follower waits for the hand-over only while
the lead fill is alive; a follower that ends first has the rest of the read closed at the
boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from backends.base import BackendUnavailable, ByteRange, ReadBackend

__all__ = ["JointRead"]

# new -> leading -> handed -> following -> over; any state but following/over -> broken.
_NEW, _LEADING, _HANDED, _FOLLOWING, _OVER, _BROKEN = range(6)


class JointRead:
    """One read of ``lead`` + ``follow`` (adjacent ranges of ``location``) from ``source``.

    Runs on one event loop. ``spawn`` runs the closing of a store read left behind
    (the reader's task spawner, so shutdown waits for it). Tell it when each fill's task
    ends (:meth:`lead_ended`, :meth:`follow_ended`).
    """

    def __init__(self, source: ReadBackend, location: str, lead: ByteRange, follow: ByteRange,
                 spawn: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        if lead.end != follow.start:
            raise ValueError(f"ranges {lead} and {follow} are not adjacent")
        self.source, self.location = source, location
        self.lead_range, self.follow_range = lead, follow
        self._spawn = spawn
        self._state = _NEW
        self._read: AsyncIterator[bytes] | None = None
        self._leftover = b""  # bytes past the boundary that came in the lead's last piece
        self._lead_alive = True
        self._follower_alive = True
        self._changed = asyncio.Event()
        self._shared = False
        self.lead = _View(self, lead=True)
        self.follow = _View(self, lead=False)

    @property
    def shared(self) -> bool:
        """The follower took over the lead's read at the boundary."""
        return self._shared

    def lead_ended(self) -> None:
        self._lead_alive = False
        self._changed.set()

    def follow_ended(self) -> None:
        self._follower_alive = False
        if self._state == _HANDED:
            self._close_read()
            self._state = _OVER

    # -- the two readers --------------------------------------------------------------

    async def _lead(self) -> AsyncIterator[bytes]:
        self._state = _LEADING
        self._read = self.source.read(self.location, ByteRange(self.lead_range.start, self.follow_range.end))
        pos, end, handed = self.lead_range.start, self.lead_range.end, False
        try:
            while pos < end:
                try:
                    piece = await anext(self._read)
                except StopAsyncIteration:
                    raise BackendUnavailable(f"store read ended at {pos} of {self.follow_range.end}",
                                             location=self.location) from None
                if pos + len(piece) > end:
                    self._leftover = piece[end - pos:]
                    piece = piece[:end - pos]
                pos += len(piece)
                if pos == end:  # hand over first: the fill closes this view once it has the last byte
                    handed = True
                    self._hand_over()
                yield piece
        finally:
            if not handed:
                self._break()

    async def _follow(self) -> AsyncIterator[bytes]:
        while self._state in (_NEW, _LEADING) and self._lead_alive:
            self._changed.clear()
            await self._changed.wait()
        if self._state != _HANDED:  # the lead read nothing, or did not get to the boundary
            self._state = _BROKEN
            async for piece in _private(self.source, self.location, self.follow_range):
                yield piece
            return
        self._state, self._shared = _FOLLOWING, True
        read, self._read = self._read, None
        assert read is not None
        try:
            if self._leftover:
                yield self._leftover
                self._leftover = b""
            async for piece in read:
                yield piece
        finally:
            self._state = _OVER
            await _aclose(read)

    # -- internals ----------------------------------------------------------------------

    def _hand_over(self) -> None:
        if self._follower_alive:
            self._state = _HANDED
        else:
            self._close_read()
            self._state = _OVER
        self._changed.set()

    def _break(self) -> None:
        self._state = _BROKEN
        self._close_read()
        self._changed.set()

    def _close_read(self) -> None:
        read, self._read = self._read, None
        self._leftover = b""
        if read is not None:
            self._spawn(_aclose(read))


class _View:
    """What one fill sees as its store: the joint read for its own range, once; else a private read."""

    def __init__(self, joint: JointRead, *, lead: bool) -> None:
        self._joint = joint
        self._is_lead = lead
        self._used = False

    async def size(self, location: str) -> int:
        return await self._joint.source.size(location)

    def read(self, location: str, byte_range: ByteRange | None = None) -> AsyncIterator[bytes]:
        joint = self._joint
        mine = joint.lead_range if self._is_lead else joint.follow_range
        first, self._used = not self._used, True
        if first and location == joint.location and byte_range == mine:
            return joint._lead() if self._is_lead else joint._follow()
        if first and self._is_lead:
            joint._break()  # the lead reads elsewhere: the follower must not wait for it
        elif first:
            joint.follow_ended()  # the follower reads elsewhere: the lead stops at the boundary
        return joint.source.read(location, byte_range)

    async def aclose(self) -> None:
        """The store itself is closed by its owner."""


async def _private(source: ReadBackend, location: str, byte_range: ByteRange) -> AsyncIterator[bytes]:
    read = source.read(location, byte_range)
    try:
        async for piece in read:
            yield piece
    finally:
        await _aclose(read)


async def _aclose(read: AsyncIterator[bytes]) -> None:
    aclose = getattr(read, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
