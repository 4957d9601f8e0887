"""A lean HTTP/1.1 client for the one request a cold fill makes most: a ranged GET over plain http.

Why it exists: through httpx/httpcore/h11/anyio a ranged read costs ~1.5 s of event-loop
CPU per GiB (64 KiB reads, cancel scopes, h11 parsing, chunk joins). Here a
:class:`asyncio.BufferedProtocol` (:mod:`backends.http_wire`) lets the kernel copy the body
straight into a 1 MiB piece buffer, and the reading task wakes once per piece, not once per
socket read.

It handles only the easy answers: ``206`` with a ``Content-Range`` starting at the asked
byte, a ``Content-Length`` and no ``Transfer-Encoding``; and, for a pool made with
``whole_ok``, a ``200`` with a ``Content-Length`` (a store that ignores ``Range``: the body
is the whole object, which the caller reads once, see :mod:`backends.sequential`). For
anything else (redirects, errors, chunked bodies, odd heads, refused connections)
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
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from .base import PIECE_SIZE, BackendUnavailable, ByteRange
from .http_wire import Closed, Connection, Head, parse_head

__all__ = ["FastBody", "FastPool", "FastStats", "FastTarget", "fast_target"]

T = TypeVar("T")

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
    wholes: int = 0  # ranged reads answered with the whole object (200), handed over whole


def _body_length(head: Head, byte_range: ByteRange, location: str, statuses: frozenset[int],
                 whole_ok: bool) -> tuple[int, bool] | None:
    """``(body length, whole)`` of an acceptable answer for ``byte_range``; ``None`` if not acceptable.

    A ranged answer (206, or a status in ``statuses``) carries a ``Content-Range`` starting at
    the asked byte; with ``whole_ok``, a 200 without one is the whole object (``whole``).
    Raises :class:`BackendUnavailable` when the store says the object ends before the range.
    """
    if "transfer-encoding" in head.headers:
        return None
    match = _CONTENT_RANGE.match(head.headers.get("content-range", ""))
    length = head.headers.get("content-length", "")
    if not length.isdigit():
        return None
    if whole_ok and head.status == 200 and "content-range" not in head.headers:
        if int(length) < byte_range.end:
            raise BackendUnavailable("object is shorter than the range", location=location)
        return int(length), True
    if head.status not in statuses or match is None:
        return None
    first, last = int(match.group(1)), int(match.group(2))
    if first != byte_range.start or last < first or int(length) != last - first + 1:
        return None
    if last + 1 < byte_range.end:
        raise BackendUnavailable("object is shorter than the range", location=location)
    return int(length), False


class FastBody:
    """The body of one accepted answer: the asked range, or (:attr:`whole`) the whole object.
    Iterate :meth:`pieces` once; :meth:`close` always.

    :meth:`close` returns the connection to the pool only if the whole body was read
    and the server keeps it alive; otherwise the connection is closed.
    """

    def __init__(self, pool: FastPool, key: tuple[str, int], conn: Connection, slots: asyncio.Semaphore,
                 length: int, want: int, keep_alive: bool, location: str, whole: bool = False) -> None:
        self._pool, self._key, self._conn, self._slots = pool, key, conn, slots
        self.whole = whole  # the store ignored Range: the body is the whole object, ``length`` bytes
        self.length = length
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
            piece = await self._next(self._conn.read_piece(size))
            self._sent += size
            yield piece

    async def read_into(self, into: memoryview) -> AsyncIterator[int]:
        """Put the next ``len(into)`` body bytes (fewer if the body ends first) into ``into``,
        front to back, with no copy of ours; yield the size of each piece of at most
        ``PIECE_SIZE`` as it lands. Raises as :meth:`pieces` does."""
        pos, end = 0, min(len(into), self._want - self._sent)
        while pos < end:
            size = min(PIECE_SIZE, end - pos)
            await self._next(self._conn.read_into(into[pos:pos + size]))
            pos += size
            self._sent += size
            yield size

    async def _next(self, read: Awaitable[T]) -> T:
        """The connection's ``read``, its failures told as the store's."""
        try:
            return await read
        except Closed as exc:
            raise BackendUnavailable(
                f"http store sent {self._sent + exc.received} of {self._want} bytes", location=self._location
            ) from None
        except TimeoutError:
            raise BackendUnavailable("http store timed out (ReadTimeout)", location=self._location) from None

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
                 range_statuses: frozenset[int] = frozenset({206}), whole_ok: bool = False) -> None:
        self.timeout = timeout
        # Statuses that may carry the asked range: 206, and for servers known to say 200
        # with a matching Content-Range (rclone's S3), 200 too (see backends.s3).
        self.range_statuses = range_statuses
        # Whether a 200 without Content-Range (the whole object: Range ignored) is handed over.
        self.whole_ok = whole_ok
        self.max_connections = max_connections
        self.stats = FastStats()
        self._agent = user_agent
        self._idle: dict[tuple[str, int], list[Connection]] = {}
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def open(self, target: FastTarget, byte_range: ByteRange, location: str,
                   headers: Mapping[str, str] | None = None) -> FastBody | None:
        """Send ``GET`` with ``Range`` for ``byte_range`` (and ``headers``, e.g. a token); return its
        body, or ``None`` to fall back.

        ``None`` means: the answer was not an acceptable 206 (nor, with ``whole_ok``, a
        200 of the whole object: see :attr:`FastBody.whole`), or the connection failed
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
                head = parse_head(raw)
                accepted = (_body_length(head, byte_range, location, self.range_statuses, self.whole_ok)
                            if head is not None else None)
            except Closed as exc:
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
            if head is None or accepted is None:
                conn.close()
                return None
            self.stats.reuses += reused
            length, whole = accepted
            self.stats.wholes += whole
            return FastBody(self, key, conn, slots, length, length if whole else byte_range.length,
                            head.keep_alive, location, whole)
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

    def _take_idle(self, key: tuple[str, int]) -> Connection | None:
        conns = self._idle.get(key)
        while conns:
            conn = conns.pop()
            if conn.idle_clean:
                return conn
            conn.close()
        return None

    async def _connect(self, target: FastTarget, location: str) -> Connection | None:
        assert self._loop is not None
        loop, timeout = self._loop, self.timeout
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(lambda: Connection(loop, timeout), target.host, target.port)
        except TimeoutError:
            raise BackendUnavailable("http store timed out (ConnectTimeout)", location=location) from None
        except OSError:
            return None  # refused, unresolvable...: httpx repeats it and words the error
        self.stats.connects += 1
        return conn

    def _release(self, key: tuple[str, int], conn: Connection, slots: asyncio.Semaphore, *, reuse: bool) -> None:
        slots.release()
        if not reuse or self._closed or not conn.idle_clean or conn.loop is not self._loop:
            conn.close()
            return
        conns = self._idle.setdefault(key, [])
        conns.append(conn)
        conn.park()
        while len(conns) > self.max_connections:
            conns.pop(0).close()
