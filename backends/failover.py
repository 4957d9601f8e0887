"""Reading one object from the first of its copies that answers (an image in several stores).

:class:`FailoverBackend` is a :class:`~backends.base.ReadBackend` over an ordered list of
copies of the same bytes, each a ``(store name, backend, location)``. A read starts at the
copy that answered last (at first: the first one); when that copy fails (not found,
unavailable, any store error) before or during the read, the rest of the asked range is
read from the next copy, so a client never notices which store served which bytes. The
copies hold the same image: bytes from any of them are checked against the image's chunk
addresses and digests by the cache, whichever copy they came from.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

from .base import BackendError, BackendNotFound, BackendUnavailable, ByteRange, ReadBackend, read_chunks

__all__ = ["FailoverBackend", "Copy"]

log = logging.getLogger("backends.failover")

Copy = tuple[str, ReadBackend, str]  # (store name, its backend, the object's location in it)


class FailoverBackend:
    """The copies of one object, read in order. Lives on one event loop; its only state
    (the copy to try first) is a hint, so concurrent reads through it are safe."""

    def __init__(self, copies: Sequence[Copy]) -> None:
        if not copies:
            raise ValueError("a failover read needs at least one copy")
        self.copies = list(copies)
        self._first = 0
        self.read_chunks = min(read_chunks(backend) for _, backend, _ in self.copies)

    def _order(self) -> list[int]:
        """Copy indexes to try: the one that answered last, then the others in order."""
        first = self._first
        return [first] + [i for i in range(len(self.copies)) if i != first]

    @staticmethod
    def _give_up(errors: list[tuple[str, BackendError]], location: str) -> BackendError:
        text = "; ".join(f"store {name}: {exc}" for name, exc in errors)
        if all(isinstance(exc, BackendNotFound) for _, exc in errors):
            return BackendNotFound(f"no copy of the object could be found ({text})", location=location)
        return BackendUnavailable(f"no copy of the object could be read ({text})", location=location)

    def _failed(self, name: str, location: str, exc: BackendError, offset: int) -> None:
        log.warning("copy in store %s (%s) failed at byte %d: %s; trying the next copy", name, location, offset, exc)

    async def size(self, location: str) -> int:
        """The size from the first copy that tells it. Raises BackendNotFound when every
        copy is missing, BackendUnavailable otherwise."""
        errors: list[tuple[str, BackendError]] = []
        for index in self._order():
            name, backend, where = self.copies[index]
            try:
                size = await backend.size(where)
            except BackendError as exc:
                self._failed(name, where, exc, 0)
                errors.append((name, exc))
                continue
            self._first = index
            return size
        raise self._give_up(errors, location)

    async def read(self, location: str, byte_range: ByteRange | None = None) -> AsyncIterator[bytes]:
        """The object (or ``byte_range``): from one copy, then from the next where one fails.

        Raises BackendNotFound when every copy is missing, BackendUnavailable when none could
        give the rest of the bytes.
        """
        start = 0 if byte_range is None else byte_range.start
        end = None if byte_range is None else byte_range.end
        offset = start
        errors: list[tuple[str, BackendError]] = []
        for index in self._order():
            name, backend, where = self.copies[index]
            try:
                if end is None and offset > start:
                    end = await backend.size(where)  # the whole object was asked; the rest of it now
                wanted = None if end is None else ByteRange(offset, end)
                it = backend.read(where, wanted)
                try:
                    async for piece in it:
                        offset += len(piece)
                        yield piece
                finally:
                    await it.aclose()  # type: ignore[attr-defined]
            except BackendError as exc:
                self._failed(name, where, exc, offset)
                errors.append((name, exc))
                continue
            self._first = index
            return
        raise self._give_up(errors, location)

    async def aclose(self) -> None:
        """Nothing to release: the copies' backends belong to the store registry."""
