"""The machinery every format probe shares: byte regions captured across pieces, and results.

A probe watches the stream for one format family. It asks for the byte ranges it needs as
:class:`Region`\\ s (absolute offsets), decides from them, and drops them once it has decided,
so what an inspection holds is bounded by the largest header region (1 MiB, a VMDK
descriptor), never by the image.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from typing import ClassVar, Literal

__all__ = ["HeaderProbe", "Match", "Placement", "Probe", "Region"]

#: Where a format's signature lives, which decides how matches combine: ``head``: a header in
#: sector 0 (at most one format owns it); ``volume``: an ISO volume descriptor at 32 KiB (may
#: sit behind a partition table: hybrid ISOs); ``tail``: a footer at the very end (fixed VHD);
#: ``table``: an MBR/GPT partition table in sector 0 of raw data.
Placement = Literal["head", "volume", "tail", "table", "none"]


@dataclass(frozen=True)
class Match:
    """A probe recognised its format. ``unsafe`` is why the data must be refused, if it must."""

    format: str
    virtual_size: int | None
    unsafe: str | None = None
    placement: Placement = "head"


class Region:
    """Bytes ``[offset, offset + length)`` of the stream, collected from pieces as they pass.

    Probes ask for a region before its first byte has gone by (the piece being processed
    counts); one asked for later would never complete, and its probe would refuse the data
    as truncated at the end.
    """

    def __init__(self, offset: int, length: int) -> None:
        self.offset = offset
        self.length = max(0, length)
        self._buf = bytearray()

    def take(self, start: int, piece: memoryview) -> bool:
        """Keeps the part of ``piece`` (stream bytes from ``start`` on) the region still needs;
        says whether there was any."""
        need = self.offset + len(self._buf)
        end = self.offset + self.length
        stop = start + len(piece)
        if need >= end or stop <= need or start > need:
            return False
        self._buf += piece[need - start:min(end, stop) - start]
        return True

    def limit(self, length: int) -> None:
        """Shrinks the region to ``length`` bytes (never grows it)."""
        self.length = min(self.length, max(0, length))
        del self._buf[self.length:]

    @property
    def complete(self) -> bool:
        return len(self._buf) == self.length

    def __len__(self) -> int:
        return len(self._buf)

    def read(self, lo: int = 0, hi: int | None = None) -> bytes:
        with memoryview(self._buf) as view:  # one copy, not two
            return bytes(view[lo:hi])

    def find(self, sub: bytes, start: int = 0) -> int:
        return self._buf.find(sub, start)

    def search(self, pattern: re.Pattern[bytes], start: int, end: int) -> re.Match[bytes] | None:
        """``pattern`` searched in place (no copy of the region) between ``start`` and ``end``."""
        return pattern.search(self._buf, start, end)


class Probe(abc.ABC):
    """Watches a stream for one format family; not thread-safe (one per upload).

    The inspector calls :meth:`feed` with every piece until :attr:`decided`, then
    :meth:`end` once at the end of the stream. A decided probe has :attr:`match` set when
    the data is its format and ``None`` when it is not.
    """

    name: ClassVar[str]
    placement: ClassVar[Placement] = "head"

    def __init__(self) -> None:
        self.decided = False
        self.match: Match | None = None
        self._regions: list[Region] = []
        self._start = 0
        self._piece = memoryview(b"")

    def feed(self, start: int, piece: memoryview) -> None:
        """``piece`` holds stream bytes from offset ``start`` on."""
        if self.decided:
            return
        took = False
        for region in self._regions:
            took = region.take(start, piece) or took
        if took:  # decisions depend only on region contents
            self._start, self._piece = start, piece
            self._advance()
            self._piece = memoryview(b"")  # never keep the caller's buffer alive

    def end(self, total: int, tail: bytes) -> None:
        """The stream ended after ``total`` bytes; ``tail`` holds its last bytes (up to 1536)."""
        if not self.decided:
            self._at_end(total, tail)
        if not self.decided:
            self._no()

    def want(self, offset: int, length: int) -> Region:
        """A new region, already given the piece being processed (it may start inside it)."""
        region = Region(offset, length)
        region.take(self._start, self._piece)
        self._regions.append(region)
        return region

    def _found(self, virtual_size: int | None, unsafe: str | None = None, *, format: str | None = None) -> None:
        self.decided, self.match = True, Match(format or self.name, virtual_size, unsafe, self.placement)
        self._release()

    def _no(self) -> None:
        self.decided, self.match = True, None
        self._release()

    def _release(self) -> None:
        for region in self._regions:  # subclasses keep references to their regions: empty them
            region.limit(0)
        self._regions.clear()

    @abc.abstractmethod
    def _advance(self) -> None:
        """Looks at the regions after a piece: asks for more, decides, or waits."""

    def _at_end(self, total: int, tail: bytes) -> None:
        """Decides with what the stream held; the default: not this format."""


class HeaderProbe(Probe):
    """A format told by a magic at a fixed offset of a fixed-size header at offset 0."""

    magic: ClassVar[bytes]
    magic_at: ClassVar[int] = 0
    header_size: ClassVar[int]

    def __init__(self) -> None:
        super().__init__()
        self._head = self.want(0, self.header_size)

    def _advance(self) -> None:
        magic_end = self.magic_at + len(self.magic)
        if len(self._head) >= magic_end and self._head.read(self.magic_at, magic_end) != self.magic:
            self._no()
        elif self._head.complete:
            self._judge(self._head.read())

    def _at_end(self, total: int, tail: bytes) -> None:
        if len(self._head) >= self.magic_at + len(self.magic):  # the magic matched
            self._found(None, f"the {self.name} header is truncated")

    @abc.abstractmethod
    def _judge(self, header: bytes) -> None:
        """Decides from the whole header, whose magic matched."""
