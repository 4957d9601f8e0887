"""The store interface: where image data lives durably, behind the cache.

Capability is a type: every store can be read (:class:`ReadBackend`); only some
can be written (:class:`WriteBackend`). Bytes flow as ``AsyncIterator[bytes]`` in
bounded pieces; ranges travel as :class:`ByteRange`. Foreign errors (OSError,
httpx errors, ...) are translated once, inside each backend, into the few
:class:`BackendError` types below.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = [
    "ByteRange",
    "BackendError",
    "BackendNotFound",
    "BackendUnavailable",
    "BackendCorrupt",
    "BackendFull",
    "ReadBackend",
    "WriteBackend",
    "Writer",
    "CheckableBackend",
    "LocalBackend",
    "local_file",
    "read_chunks",
    "read_into",
    "open_reader",
    "CopyReader",
    "RangeReader",
    "PIECE_SIZE",
]

# Size of the pieces a backend yields: big enough to keep per-piece overhead low
# (see ../shared/anchors/limits.md: 64 KiB pieces cost 4-8x), small enough to
# bound memory per stream.
PIECE_SIZE = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes ``start`` (inclusive) to ``end`` (exclusive) of an object."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.end < self.start:
            raise ValueError(f"bad byte range {self.start}-{self.end}")

    @property
    def length(self) -> int:
        return self.end - self.start


class BackendError(Exception):
    """A store failed; ``location`` names the object."""

    def __init__(self, message: str, *, location: str = "") -> None:
        super().__init__(message)
        self.location = location


class BackendNotFound(BackendError):
    """The object does not exist (or no longer exists) in the store."""


class BackendUnavailable(BackendError):
    """The store could not be reached or failed mid-stream; retrying may help."""


class BackendFull(BackendError):
    """The store has no room (disk full, quota exceeded); nothing of the write is kept."""


class BackendCorrupt(BackendError):
    """The store returned bytes that do not match what was expected (size, digest)."""


@runtime_checkable
class ReadBackend(Protocol):
    """A store that can be read.

    Implementations are safe to share between concurrent tasks of one event loop.
    """

    async def size(self, location: str) -> int:
        """Return the object's size in bytes.

        Raises :class:`BackendNotFound` if it does not exist, :class:`BackendUnavailable`
        if the store cannot tell now.
        """
        ...

    def read(self, location: str, byte_range: ByteRange | None = None) -> AsyncIterator[bytes]:
        """Stream the object (or ``byte_range`` of it) in pieces of at most ``PIECE_SIZE``.

        The iterator raises :class:`BackendNotFound` or :class:`BackendUnavailable`
        (also mid-stream, after some pieces). It yields exactly the requested bytes
        or raises; a short object raises :class:`BackendUnavailable`. The caller
        should close the iterator (``aclose``) if it stops early.
        """
        ...

    async def aclose(self) -> None:
        """Release clients and connections. Called once, at shutdown."""
        ...


class Writer(Protocol):
    """One object being written. Not safe for concurrent use.

    Nothing is visible at the final location before :meth:`commit`; after
    :meth:`abort` (or a failed commit) nothing is left behind.
    """

    async def write(self, data: bytes) -> None:
        """Append ``data``. Raises :class:`BackendError`."""
        ...

    async def commit(self) -> str:
        """Make the object durable and visible; return its location URL."""
        ...

    async def abort(self) -> None:
        """Discard what was written. Safe to call more than once, and after commit fails."""
        ...


@runtime_checkable
class WriteBackend(ReadBackend, Protocol):
    """A store that can also be written and deleted from."""

    def location_for(self, image_id: str) -> str:
        """The URL :meth:`open_writer`'s commit gives ``image_id``'s data (whether or not it exists)."""
        ...

    async def open_writer(self, image_id: str) -> Writer:
        """Start writing the data of ``image_id``; the caller must commit or abort."""
        ...

    async def delete(self, location: str) -> None:
        """Delete the object. Deleting a missing object is not an error."""
        ...


@runtime_checkable
class CheckableBackend(Protocol):
    """A store that can tell whether it works now (credentials accepted, container there)."""

    async def check(self) -> None:
        """Return if the store can serve; else raise :class:`BackendError` saying why."""
        ...


@runtime_checkable
class LocalBackend(Protocol):
    """A store whose objects are files on this machine, which a reader may open itself (and
    send with ``sendfile``) instead of caching copies. An object is complete once it has
    its name and is never written after (only replaced by a new file, or deleted)."""

    def local_path(self, location: str) -> Path | None:
        """The file behind ``location`` if readers should read it in place; ``None`` if this
        store's files are better cached (a network filesystem). Raises :class:`BackendError`
        if this store does not hold ``location``."""
        ...


def local_file(backend: ReadBackend, location: str) -> Path | None:
    """The file to read ``location`` from in place, if ``backend`` is a local store serving it so."""
    if not isinstance(backend, LocalBackend):
        return None
    try:
        return backend.local_path(location)
    except BackendError:
        return None


def read_chunks(backend: ReadBackend) -> int:
    """How many cache chunks a read-ahead fill asks ``backend`` for in one read (its
    ``read_chunks`` attribute; 1 if it has none).

    A store with a high cost per request takes more: Swift answers each GET through its proxy
    and an object server (~3 ms of their CPU per 4 MiB range here), S3 servers sign and look
    up each one. A plain web server is often rate-limited per connection, so it keeps one
    chunk per request and the read-ahead's parallel requests. Wrappers (metering, failover)
    pass their store's on.
    """
    value = getattr(backend, "read_chunks", 1)
    return value if isinstance(value, int) and value > 0 else 1



class RangeReader(Protocol):
    """One store read of a range, taken in turns: each :meth:`into` puts the range's next
    ``len(view)`` bytes into ``view``. Close it (:meth:`aclose`) however the read ends."""

    def into(self, view: memoryview) -> AsyncIterator[int]:
        """Put the next ``len(view)`` bytes into ``view`` (writable), front to back; yield how
        many more landed each time (at most ``PIECE_SIZE``). Raises as ``read`` does, and
        :class:`BackendUnavailable` if the range ends first."""
        ...

    async def aclose(self) -> None:
        ...


async def open_reader(backend: ReadBackend, location: str, byte_range: ByteRange) -> RangeReader:
    """A :class:`RangeReader` of ``byte_range`` of ``location``.

    A store with its own ``open_reader`` (the s3 and swift stores, over the lean HTTP
    client) has the kernel put the bytes where :meth:`RangeReader.into` says: a cold fill's
    bytes then cross memory once, not three times (receive buffer, ``bytes`` piece, fill
    buffer). Any other store is read with ``read`` and copied (:class:`CopyReader`).
    """
    opener = getattr(backend, "open_reader", None)
    if opener is not None:
        return await opener(location, byte_range)  # type: ignore[no-any-return]
    return CopyReader(backend.read(location, byte_range), location)


class CopyReader:
    """A :class:`RangeReader` over a store's pieces, copied; bytes of a piece past a view's
    end are kept for the next view."""

    def __init__(self, pieces: AsyncIterator[bytes], location: str) -> None:
        self._pieces, self._location = pieces, location
        self._leftover: memoryview | None = None

    async def into(self, view: memoryview) -> AsyncIterator[int]:
        pos = 0
        while pos < len(view):
            piece, self._leftover = self._leftover, None
            if piece is None:
                try:
                    piece = memoryview(await anext(self._pieces))
                except StopAsyncIteration:
                    raise BackendUnavailable(f"store read ended {len(view) - pos} bytes short",
                                             location=self._location) from None
            take = min(len(piece), len(view) - pos)
            if take < len(piece):
                self._leftover = piece[take:]
            view[pos:pos + take] = piece[:take]
            pos += take
            yield take

    async def aclose(self) -> None:
        self._leftover = None
        aclose = getattr(self._pieces, "aclose", None)
        if aclose is not None:
            await aclose()


async def read_into(backend: ReadBackend, location: str, byte_range: ByteRange, into: memoryview) -> AsyncIterator[int]:
    """Read ``byte_range`` of ``location`` into ``into`` (writable, ``byte_range.length``
    long) through :func:`open_reader`; yield how many more bytes landed each time."""
    reader = await open_reader(backend, location, byte_range)
    counts = reader.into(into)
    try:
        async for count in counts:
            yield count
    finally:
        await counts.aclose()  # type: ignore[attr-defined]
        await reader.aclose()
