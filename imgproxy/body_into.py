"""Request bodies read straight into the app's buffers: the ``imgproxy.body_into`` extension.

uvicorn hands an app a request body as ``bytes`` messages of about 64 KiB (it stops reading
the socket past that until the app asks again): each byte is copied three times on the way
(the parser's piece, uvicorn's body buffer, the message's ``bytes``), and an upload of 1 GiB
costs 16,000 turns of the app's receive loop. An upload joined those pieces into 4 MiB
pieces again (a fourth copy) and the store's direct writer staged them (a fifth).

With this extension a body with a ``Content-Length`` is received straight into the buffer
the app lent (the kernel's copy is the only one): once the app asks, the connection's
transport is handed to a :class:`_RawBody` protocol (asyncio's ``BufferedProtocol``) whose
receive buffer is the app's, limited to the body's remaining bytes, so nothing of a next
request is read as body; at the body's end the HTTP protocol gets the transport back with a
fresh parser and the request is complete as if its parser had read it. A chunked body's
pieces are copied from the parser once into the app's buffer. Either way the app is woken
when its buffer is full or the body has ended: one turn of the app per buffer. The app
reuses its buffers (page-aligned: a store writes them with ``O_DIRECT`` as they are).

- ``scope["extensions"][BODY_INTO]["open"]()`` gives a :class:`BodyInto` for the request
  (once; the app must not also ``receive`` the body). It answers ``Expect: 100-continue``.
- :meth:`BodyInto.read_into` fills a buffer. Bytes that arrive while the app holds no buffer
  wait in a small spill (past ``SPILL_MAX`` the socket is not read until the app asks).
- A client that goes away before the body ends: ``read_into`` raises Starlette's
  ``ClientDisconnect``, as ``request.stream()`` does.

:func:`body_source` gives the app one interface whatever serves it (another server, a test
client): :class:`IteratorBody` copies ``bytes`` pieces of any async iterator into the buffers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from starlette.requests import ClientDisconnect, Request
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

__all__ = ["BODY_INTO", "SPILL_MAX", "BodyInto", "BodySource", "IteratorBody", "body_source"]

BODY_INTO = "imgproxy.body_into"

# Body bytes held while the app lends no buffer, before the socket is paused (uvicorn's
# HIGH_WATER_LIMIT is 64 KiB; a bit more here, since the app comes back within a turn).
SPILL_MAX = 256 * 1024


class BodySource(Protocol):
    """A request body, read into buffers the caller owns."""

    async def read_into(self, buffer: memoryview) -> int:
        """Fill ``buffer`` (a writable byte view) from the body; return how many bytes.

        Fewer than ``len(buffer)`` only at the body's end (0 once it has ended). Raises
        ``ClientDisconnect`` when the client went away before the end.
        """
        ...


class BodyInto:
    """One request's body, copied by the protocol into the app's buffer. Event loop only.

    The protocol calls :meth:`take` for each body piece, :meth:`end` at the body's end and
    :meth:`lost` when the connection is lost; the app calls :meth:`read_into`.
    """

    def __init__(self, cycle: RequestResponseCycle, loop: asyncio.AbstractEventLoop,
                 protocol: Any = None, length: int | None = None) -> None:
        self.cycle = cycle
        self._loop = loop
        # Raw receiving (the body's length is known, the protocol can hand the transport over):
        # the HTTP protocol, and the body bytes not yet received from the socket.
        self._protocol = protocol
        self._remaining = None if length is None or protocol is None else length - len(cycle.body)
        self._raw: _RawBody | None = None
        self._spill = bytearray()  # arrived while no buffer was lent
        self._target: memoryview | None = None  # the rest of the lent buffer
        self._filled = 0  # bytes put into the lent buffer so far
        self._waiter: asyncio.Future[None] | None = None
        self._ended = not cycle.more_body
        self._gone = cycle.disconnected
        # What uvicorn buffered before the app opened this reader.
        self._spill += cycle.body
        cycle.body = bytearray()

    # -- the protocol's side ---------------------------------------------------------

    def take(self, piece: bytes) -> None:
        """A body piece from the parser: into the lent buffer, the rest into the spill."""
        if self._remaining is not None:
            self._remaining -= len(piece)
        target = self._target
        if target is None:
            self._to_spill(piece)
            return
        n = len(piece)
        if n < len(target):
            target[:n] = piece
            self._target = target[n:]
            self._filled += n
            return
        room = len(target)
        target[:] = memoryview(piece)[:room]
        self._filled += room
        if room < n:
            self._spill += memoryview(piece)[room:]
        self._wake()

    def _to_spill(self, data: bytes | memoryview) -> None:
        self._spill += data
        if len(self._spill) > SPILL_MAX:
            self.cycle.flow.pause_reading()

    def end(self) -> None:
        self._ended = True
        self._wake()

    def lost(self) -> None:
        self._gone = True
        self._wake()

    def _wake(self) -> None:
        self._target = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the app's side --------------------------------------------------------------

    async def read_into(self, buffer: memoryview) -> int:
        if self._waiter is not None:
            raise RuntimeError("read_into is already waiting")
        cycle = self.cycle
        if cycle.waiting_for_100_continue and not cycle.transport.is_closing():
            cycle.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            cycle.waiting_for_100_continue = False
        filled = min(len(self._spill), len(buffer))
        if filled:
            buffer[:filled] = memoryview(self._spill)[:filled]
            del self._spill[:filled]
        if filled == len(buffer) or self._ended or self._gone:
            return self._result(filled, len(buffer))
        self._target = buffer[filled:]
        self._filled = filled
        self._waiter = self._loop.create_future()
        if self._remaining is not None and self._raw is None and self._remaining > 0:
            self._raw = _RawBody(self, self._protocol)
            cycle.transport.set_protocol(self._raw)
        cycle.flow.resume_reading()
        try:
            await self._waiter
        finally:
            self._waiter = None
            self._target = None
        return self._result(self._filled, len(buffer))

    # -- raw receiving (the transport is _RawBody's) ---------------------------------

    def raw_buffer(self) -> memoryview:
        """Where the next socket read goes: the lent buffer, else (reading is paused then,
        but a read may be under way) a piece for the spill; never past the body's end."""
        assert self._remaining is not None
        if self._target is not None:
            return self._target[:self._remaining]
        return memoryview(bytearray(min(self._remaining, 64 * 1024)))

    def raw_received(self, buffer: memoryview, n: int) -> None:
        assert self._remaining is not None
        self._remaining -= n
        target = self._target
        if target is not None and buffer.obj is target.obj:
            self._filled += n
            self._target = target[n:]
            if not self._target:
                # Nowhere to put more until the app lends a buffer again (pausing here, not
                # in get_buffer, where the event loop is between its read's two calls).
                self.cycle.flow.pause_reading()
                self._wake()
        elif not self.cycle.response_complete:  # after the response, the rest is thrown away
            self._to_spill(buffer[:n])
        if self._remaining == 0:
            self._raw_done()

    def _raw_done(self) -> None:
        """The body has been received: the HTTP protocol reads the connection again."""
        raw, self._raw = self._raw, None
        assert raw is not None
        raw.hand_back()
        self._protocol.body_received()

    def _result(self, filled: int, wanted: int) -> int:
        if filled < wanted and self._gone and not self._ended:
            raise ClientDisconnect()
        return filled


class _RawBody(asyncio.BufferedProtocol):
    """The connection's protocol while a body is received into the app's buffer.

    Everything but the received bytes goes to the HTTP protocol (connection lost, EOF,
    write flow control), so its request and response carry on as they would."""

    def __init__(self, reader: BodyInto, protocol: Any) -> None:
        self._reader = reader
        self._protocol = protocol
        self._buffer: memoryview | None = None

    def get_buffer(self, sizehint: int) -> memoryview:
        self._buffer = self._reader.raw_buffer()
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        buffer, self._buffer = self._buffer, None
        assert buffer is not None
        self._reader.raw_received(buffer, nbytes)

    def hand_back(self) -> None:
        self._reader.cycle.transport.set_protocol(self._protocol)

    def connection_lost(self, exc: Exception | None) -> None:
        self._protocol.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self._protocol.eof_received()  # type: ignore[no-any-return]

    def pause_writing(self) -> None:
        self._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._protocol.resume_writing()


class IteratorBody:
    """A :class:`BodySource` over an async iterator of ``bytes`` (one copy into each buffer)."""

    def __init__(self, pieces: AsyncIterator[bytes]) -> None:
        self._pieces = pieces.__aiter__()
        self._rest = memoryview(b"")

    async def read_into(self, buffer: memoryview) -> int:
        filled = 0
        while filled < len(buffer):
            if not self._rest:
                try:
                    self._rest = memoryview(await self._pieces.__anext__()).cast("B")
                except StopAsyncIteration:
                    break
            take = min(len(self._rest), len(buffer) - filled)
            buffer[filled:filled + take] = self._rest[:take]
            self._rest = self._rest[take:]
            filled += take
        return filled


def body_source(request: Request) -> BodySource:
    """The request's body: read in place when the protocol offers it, else from its stream."""
    opener: Callable[[], BodyInto] | None = request.scope.get("extensions", {}).get(BODY_INTO, {}).get("open")
    if opener is not None:
        return opener()
    return IteratorBody(request.stream())

