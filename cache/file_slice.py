"""A verified range of an open file, handed to the HTTP layer to send as it is."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FileSlice"]


@dataclass(frozen=True, slots=True)
class FileSlice:
    """Bytes ``offset``..``offset + count`` of the open descriptor ``fd``, already verified.

    The HTTP layer sends them with ``sendfile`` (no copy through Python) or, on a server
    without the ASGI ``http.response.zerocopysend`` extension, with ``pread``s. Only valid
    until the iterator that yielded it is resumed or closed: that closes ``fd``. Never
    read past ``count`` (the file may hold other bytes there).
    """

    fd: int
    offset: int
    count: int

    def __len__(self) -> int:
        return self.count
