"""The wire side of the fast path (:mod:`backends.http_fast`): one HTTP/1.1 connection as an
:class:`asyncio.BufferedProtocol`, and the parsing of a response head.

The kernel copies a body straight into the piece buffer a reader asks for, and the reading
task wakes once per piece, not once per socket read. Nothing here knows ranges or pools;
:class:`backends.http_fast.FastPool` decides which answers it accepts.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import cast

from .base import PIECE_SIZE

__all__ = ["HEAD_LIMIT", "Closed", "Connection", "Head", "parse_head"]

# Bound on a response head; nginx's heads are ~250 bytes, a bigger one is refused (fallback).
HEAD_LIMIT = 64 * 1024
_HEAD_END = re.compile(rb"\r?\n\r?\n")

class Closed(Exception):
    """The peer closed (or reset) the connection; ``received`` bytes of the head or piece had come."""

    def __init__(self, received: int) -> None:
        super().__init__(received)
        self.received = received


class Connection(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection. Not safe for concurrent use: one request at a time.

    Bytes land in ``_target`` (the piece being filled) when one is set, else in a
    scratch buffer appended to ``_pending`` (the head, and any body bytes read with it).
    Reading pauses while no piece is wanted, so body bytes wait in the kernel and are
    later copied once, straight into their piece.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._scratch = bytearray(HEAD_LIMIT)
        self._pending = bytearray()
        self._piece: bytearray | None = None  # receive buffer of the body being read
        self._target: memoryview | None = None
        self._filled = 0
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0  # loop time of the last bytes (or of the start of the wait)
        self._paused = False

    # --- protocol callbacks (the event loop calls these) ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview | bytearray:
        if self._target is not None:
            return self._target[self._filled :]
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        self._last = self.loop.time()
        if self._target is not None:
            self._filled += nbytes
            if self._filled < len(self._target):
                return
            self._target = None
            self._pause()
        else:
            self._pending += memoryview(self._scratch)[:nbytes]
            if len(self._pending) > HEAD_LIMIT + PIECE_SIZE:
                self._pause()  # a server sending more than asked; we will not read it all
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()

    # --- used by the request code ---

    @property
    def idle_clean(self) -> bool:
        """Open and holding no stray bytes: safe to send the next request on."""
        return not self.closed and not self._pending and self.transport is not None and not self.transport.is_closing()

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self._pending.clear()
        self._resume()
        self.transport.write(data)

    async def read_head(self) -> bytes:
        """Return the response head (without its blank line).

        Raises :class:`Closed` if the peer closed first, ``TimeoutError`` after
        ``timeout`` without bytes, ``ValueError`` for a head over ``HEAD_LIMIT``.
        """
        searched = 0
        while True:
            match = _HEAD_END.search(self._pending, max(0, searched - 3))
            if match is not None:
                head = bytes(self._pending[: match.start()])
                del self._pending[: match.end()]
                return head
            searched = len(self._pending)
            if searched > HEAD_LIMIT:
                raise ValueError("response head too large")
            if self.closed:
                raise Closed(len(self._pending))
            await self._wait()

    async def read_piece(self, size: int) -> bytes:
        """Exactly ``size`` (at most ``PIECE_SIZE``) body bytes. Raises :class:`Closed` or ``TimeoutError``."""
        if self._piece is None:
            # One receive buffer per connection in use: its pages stay mapped, so the
            # kernel's copy does not pay page faults on every piece.
            self._piece = bytearray(PIECE_SIZE)
        view = memoryview(self._piece)[:size]
        await self.read_into(view)
        # One copy, so callers get immutable ``bytes`` (StreamingResponse and hashing want them).
        return bytes(view)

    async def read_into(self, view: memoryview) -> None:
        """Fill ``view`` (writable) with the next ``len(view)`` body bytes: the kernel copies
        them straight there. Raises :class:`Closed` or ``TimeoutError``; ``view`` then holds
        what came, and nothing here refers to it any more."""
        size = len(view)
        take = min(size, len(self._pending))
        if take:
            view[:take] = self._pending[:take]
            del self._pending[:take]
        if take < size:
            if self.closed:
                raise Closed(take)
            self._target, self._filled = view, take
            self._resume()
            try:
                while self._target is not None:
                    if self.closed:
                        raise Closed(self._filled)
                    await self._wait()
            finally:
                self._target = None

    def park(self) -> None:
        """Keep reading while idle in the pool, so a server's close is noticed."""
        self._piece = None  # an idle connection holds no 1 MiB buffer
        self._resume()

    def close(self) -> None:
        """Drop the connection now; unread bytes are discarded."""
        self.closed = True
        if self.transport is not None and not self.loop.is_closed():
            self.transport.abort()
        self._wake()

    # --- internals ---

    async def _wait(self) -> None:
        """Wait for the next callback; ``TimeoutError`` after ``timeout`` with no bytes."""
        self._waiter = self.loop.create_future()
        self._last = self.loop.time()
        self._timer = self.loop.call_at(self._last + self.timeout, self._check_idle)
        try:
            await self._waiter
        finally:
            self._timer.cancel()
            self._waiter = self._timer = None

    def _check_idle(self) -> None:
        # One timer per wait, re-armed from the last bytes: cheaper than a timeout per socket read.
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        due = self._last + self.timeout
        if self.loop.time() >= due:
            waiter.set_exception(TimeoutError())
        else:
            self._timer = self.loop.call_at(due, self._check_idle)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _pause(self) -> None:
        if not self._paused and self.transport is not None and not self.transport.is_closing():
            self._paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self.transport is not None and not self.transport.is_closing():
            self._paused = False
            self.transport.resume_reading()


@dataclass(frozen=True, slots=True)
class Head:
    status: int
    keep_alive: bool
    headers: dict[str, str]


def parse_head(raw: bytes) -> Head | None:
    """Status and headers of a response head; ``None`` if it is not plain HTTP/1.x."""
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        return None
    lines = text.replace("\r\n", "\n").split("\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or status_line[0] not in ("HTTP/1.1", "HTTP/1.0"):
        return None
    if len(status_line[1]) != 3 or not status_line[1].isdigit():
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            return None  # obsolete line folding or junk: let httpx judge it
        key = name.lower()
        if key in headers and key in ("content-length", "content-range", "transfer-encoding"):
            return None  # ambiguous framing
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep_alive = status_line[0] == "HTTP/1.1" and "close" not in tokens
    return Head(int(status_line[1]), keep_alive, headers)
