"""A lean HTTP/1.1 client for the one request a cold fill makes most: a ranged GET over plain http.

Why it exists: through httpx/httpcore/h11/anyio a ranged read costs ~1.5 s of event-loop
CPU per GiB (64 KiB reads, cancel scopes, h11 parsing, chunk joins). Here a
:class:`asyncio.BufferedProtocol` lets the kernel copy the body straight into a 1 MiB
piece buffer, and the reading task wakes once per piece, not once per socket read.

It handles only the easy answer: ``206`` with a ``Content-Range`` starting at the asked
byte, a ``Content-Length`` and no ``Transfer-Encoding``. For anything else (redirects,
errors, stores that ignore ``Range``, chunked bodies, odd heads, refused connections)
:meth:`FastPool.open` returns ``None`` and the caller repeats the read through httpx,
which handles those exactly as before. The caller decides which URLs may come here
(plain ``http``, no userinfo, no proxy); see :func:`fast_target`.

Concurrency: one :class:`FastPool` per backend and event loop; a connection serves one
request at a time and goes back to the idle pool only after its whole body was read
and the server did not ask to close it, so a pooled connection never holds unread bytes.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

from .base import PIECE_SIZE, BackendUnavailable, ByteRange

__all__ = ["FastPool", "FastStats", "FastTarget", "fast_target"]

# Bound on a response head; nginx's heads are ~250 bytes, a bigger one is refused (fallback).
HEAD_LIMIT = 64 * 1024
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
# Printable ASCII without space: anything else needs httpx's URL encoding.
_PLAIN_URL = re.compile(r"^[\x21-\x7e]+$")


@dataclass(frozen=True, slots=True)
class FastTarget:
    """Where a fast-path request goes: connect to ``host:port``, ask ``Host: netloc`` for ``path``."""

    host: str
    port: int
    netloc: str
    path: str


def fast_target(location: str) -> FastTarget | None:
    """``location`` split for the fast path, or ``None`` when httpx must handle it.

    Only plain ``http`` URLs with an ASCII host, no userinfo and no characters that
    would need percent-encoding qualify (the caller also rules out proxies).
    """
    if not _PLAIN_URL.match(location):
        return None
    try:
        parts = urlsplit(location)
        port = parts.port or 80
    except ValueError:
        return None
    if parts.scheme.lower() != "http" or "@" in parts.netloc or not parts.hostname:
        return None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return FastTarget(parts.hostname, port, parts.netloc, path)


@dataclass(slots=True)
class FastStats:
    """Counters an operator (or a test) can read on the backend: what the fast path did."""

    reads: int = 0  # ranged reads answered by the fast path
    fallbacks: int = 0  # ranged reads handed back to httpx (non-206 answer, refused, odd head)
    connects: int = 0  # connections opened
    reuses: int = 0  # requests sent on a pooled (kept-alive) connection


class _Closed(Exception):
    """The peer closed (or reset) the connection; ``received`` bytes of the head or piece had come."""

    def __init__(self, received: int) -> None:
        super().__init__(received)
        self.received = received


class _Connection(asyncio.BufferedProtocol):
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

        Raises :class:`_Closed` if the peer closed first, ``TimeoutError`` after
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
                raise _Closed(len(self._pending))
            await self._wait()

    async def read_piece(self, size: int) -> bytes:
        """Exactly ``size`` (at most ``PIECE_SIZE``) body bytes. Raises :class:`_Closed` or ``TimeoutError``."""
        if self._piece is None:
            # One receive buffer per connection in use: its pages stay mapped, so the
            # kernel's copy does not pay page faults on every piece.
            self._piece = bytearray(PIECE_SIZE)
        view = memoryview(self._piece)[:size]
        take = min(size, len(self._pending))
        if take:
            view[:take] = self._pending[:take]
            del self._pending[:take]
        if take < size:
            if self.closed:
                raise _Closed(take)
            self._target, self._filled = view, take
            self._resume()
            try:
                while self._target is not None:
                    if self.closed:
                        raise _Closed(self._filled)
                    await self._wait()
            finally:
                self._target = None
        # One copy, so callers get immutable ``bytes`` (StreamingResponse and hashing want them).
        return bytes(view)

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
class _Head:
    status: int
    keep_alive: bool
    headers: dict[str, str]


def _parse_head(raw: bytes) -> _Head | None:
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
    return _Head(int(status_line[1]), keep_alive, headers)


def _body_length(head: _Head, byte_range: ByteRange, location: str, statuses: frozenset[int]) -> int | None:
    """The body length of an acceptable answer (206, or a status in ``statuses``) for ``byte_range``;
    ``None`` if not acceptable. Every accepted answer carries a ``Content-Range`` starting at the asked byte.

    Raises :class:`BackendUnavailable` when the store says the object ends before the range.
    """
    if head.status not in statuses or "transfer-encoding" in head.headers:
        return None
    match = _CONTENT_RANGE.match(head.headers.get("content-range", ""))
    length = head.headers.get("content-length", "")
    if match is None or not length.isdigit():
        return None
    first, last = int(match.group(1)), int(match.group(2))
    if first != byte_range.start or last < first or int(length) != last - first + 1:
        return None
    if last + 1 < byte_range.end:
        raise BackendUnavailable("object is shorter than the range", location=location)
    return int(length)


class FastBody:
    """The body of one accepted 206. Iterate :meth:`pieces` once; :meth:`close` always.

    :meth:`close` returns the connection to the pool only if the whole body was read
    and the server keeps it alive; otherwise the connection is closed.
    """

    def __init__(self, pool: FastPool, key: tuple[str, int], conn: _Connection, slots: asyncio.Semaphore,
                 length: int, want: int, keep_alive: bool, location: str) -> None:
        self._pool, self._key, self._conn, self._slots = pool, key, conn, slots
        self._length, self._want, self._keep_alive = length, want, keep_alive
        self._location = location
        self._sent = 0
        self._closed = False

    async def pieces(self) -> AsyncIterator[bytes]:
        """Yield the asked bytes in pieces of at most ``PIECE_SIZE``.

        Raises :class:`BackendUnavailable` on a short body (peer closed) or after
        ``timeout`` seconds without a byte.
        """
        while self._sent < self._want:
            size = min(PIECE_SIZE, self._want - self._sent)
            try:
                piece = await self._conn.read_piece(size)
            except _Closed as exc:
                raise BackendUnavailable(
                    f"http store sent {self._sent + exc.received} of {self._want} bytes", location=self._location
                ) from None
            except TimeoutError:
                raise BackendUnavailable("http store timed out (ReadTimeout)", location=self._location) from None
            self._sent += size
            yield piece

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        complete = self._sent == self._want == self._length
        self._pool._release(self._key, self._conn, self._slots, reuse=complete and self._keep_alive)


class FastPool:
    """Kept-alive fast-path connections of one backend, per ``(host, port)``.

    At most ``max_connections`` requests are in flight at once (waiting longer than
    ``timeout`` for a slot raises :class:`BackendUnavailable`), and at most
    ``max_connections`` idle connections are kept per ``(host, port)``. Bound to the
    event loop that first uses it (connections from another loop are dropped).
    """

    def __init__(self, *, timeout: float, max_connections: int, user_agent: str,
                 range_statuses: frozenset[int] = frozenset({206})) -> None:
        self.timeout = timeout
        # Statuses that may carry the asked range: 206, and for servers known to say 200
        # with a matching Content-Range (rclone's S3), 200 too (see backends.s3).
        self.range_statuses = range_statuses
        self.max_connections = max_connections
        self.stats = FastStats()
        self._agent = user_agent
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def open(self, target: FastTarget, byte_range: ByteRange, location: str,
                   headers: Mapping[str, str] | None = None) -> FastBody | None:
        """Send ``GET`` with ``Range`` for ``byte_range`` (and ``headers``, e.g. a token); return its
        body, or ``None`` to fall back.

        ``None`` means: the answer was not an acceptable 206, or the connection failed
        before a response head began (the caller repeats the read through httpx, whose
        errors then tell what happened). Raises :class:`BackendUnavailable` on timeouts
        and when a 206 says the object is shorter than the range. The caller must
        :meth:`FastBody.close` a returned body.
        """
        slots = self._bind()
        try:
            if slots.locked():  # only a full pool pays for a timeout scope
                async with asyncio.timeout(self.timeout):
                    await slots.acquire()
            else:
                await slots.acquire()
        except TimeoutError:
            raise BackendUnavailable("http store timed out (PoolTimeout)", location=location) from None
        key = (target.host, target.port)
        try:
            body = await self._exchange(key, target, byte_range, location, slots, headers)
        except TimeoutError:
            slots.release()
            raise BackendUnavailable("http store timed out (ReadTimeout)", location=location) from None
        except BaseException:
            slots.release()
            raise
        if body is None:
            slots.release()
        return body

    async def _exchange(self, key: tuple[str, int], target: FastTarget, byte_range: ByteRange, location: str,
                        slots: asyncio.Semaphore, headers: Mapping[str, str] | None) -> FastBody | None:
        """One request/head exchange (retried once on a fresh connection if a pooled one was dropped).

        Closes the connection on every path that does not return a body.
        """
        request = self._request(target, byte_range, headers)
        for _ in range(2):
            conn = self._take_idle(key)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(target, location)
                if conn is None:
                    return None
            try:
                conn.send(request)
                raw = await conn.read_head()
                head = _parse_head(raw)
                length = _body_length(head, byte_range, location, self.range_statuses) if head is not None else None
            except _Closed as exc:
                conn.close()
                if reused and not exc.received:
                    continue  # the server dropped an idle connection as we sent: try a fresh one
                return None
            except ValueError:  # head too large, or a number int() refuses
                conn.close()
                return None
            except BaseException:
                conn.close()
                raise
            if head is None or length is None:
                conn.close()
                return None
            self.stats.reuses += reused
            return FastBody(self, key, conn, slots, length, byte_range.length, head.keep_alive, location)
        return None

    def close(self) -> None:
        """Close every idle connection; connections in use close when their reader ends."""
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    # --- internals ---

    def _bind(self) -> asyncio.Semaphore:
        """The slots of the running loop (a new loop starts a fresh pool)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._slots is None:
            self.close()
            self._closed = False
            self._loop = loop
            self._slots = asyncio.Semaphore(self.max_connections)
        return self._slots

    def _request(self, target: FastTarget, byte_range: ByteRange, headers: Mapping[str, str] | None) -> bytes:
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        return (
            f"GET {target.path} HTTP/1.1\r\n"
            f"Host: {target.netloc}\r\n"
            "Accept: */*\r\n"
            "Accept-Encoding: identity\r\n"
            "Connection: keep-alive\r\n"
            f"User-Agent: {self._agent}\r\n"
            f"{extra}"
            f"Range: bytes={byte_range.start}-{byte_range.end - 1}\r\n\r\n"
        ).encode("ascii")

    def _take_idle(self, key: tuple[str, int]) -> _Connection | None:
        conns = self._idle.get(key)
        while conns:
            conn = conns.pop()
            if conn.idle_clean:
                return conn
            conn.close()
        return None

    async def _connect(self, target: FastTarget, location: str) -> _Connection | None:
        assert self._loop is not None
        loop, timeout = self._loop, self.timeout
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(lambda: _Connection(loop, timeout), target.host, target.port)
        except TimeoutError:
            raise BackendUnavailable("http store timed out (ConnectTimeout)", location=location) from None
        except OSError:
            return None  # refused, unresolvable...: httpx repeats it and words the error
        self.stats.connects += 1
        return conn

    def _release(self, key: tuple[str, int], conn: _Connection, slots: asyncio.Semaphore, *, reuse: bool) -> None:
        slots.release()
        if not reuse or self._closed or not conn.idle_clean or conn.loop is not self._loop:
            conn.close()
            return
        conns = self._idle.setdefault(key, [])
        conns.append(conn)
        conn.park()
        while len(conns) > self.max_connections:
            conns.pop(0).close()
