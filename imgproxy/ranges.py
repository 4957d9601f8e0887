"""The ``Range`` request header (RFC 9110 section 14), for single byte ranges.

One range is served as 206; anything this server does not serve as a range
(other units, several ranges, syntax errors, a last byte before the first) is
ignored and the whole representation is served (200), which RFC 9110 allows
("A server MAY ignore the Range header field"). A well-formed range that selects
nothing (first byte at or past the end, ``bytes=-0``, any range of an empty
image) is unsatisfiable: 416 with ``Content-Range: bytes */<size>``.

Positions may have any number of digits (RFC 9110 sets no limit): one past the image's
size means the same as any larger one, so a 5,000-digit position is compared by its digits
and never given to ``int()`` (which refuses more than 4,300).
"""

from __future__ import annotations

import re

from backends.base import ByteRange

from .errors import RangeNotSatisfiable

__all__ = ["parse_range", "content_range"]

_SPEC = re.compile(r"[ \t]*bytes[ \t]*=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*", re.IGNORECASE | re.ASCII)
# Positions of more digits than this are past the end of any image (2**63 has 19).
_MAX_DIGITS = 18


def _position(digits: str) -> int:
    """The value of a non-empty digit string, capped at 10**18 (past any image's end)."""
    digits = digits.lstrip("0") or "0"
    return 10**_MAX_DIGITS if len(digits) > _MAX_DIGITS else int(digits)


def _before(a: str, b: str) -> bool:
    """Whether digit string ``a`` is a smaller number than ``b``, at any length."""
    a, b = a.lstrip("0"), b.lstrip("0")
    return (len(a), a) < (len(b), b)


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one range ``header`` asks for within ``size`` bytes, or None to serve everything.

    Raises :class:`RangeNotSatisfiable` (with the ``Content-Range`` header set) when the
    range is valid but selects no byte of the image.
    """
    if not header:
        return None
    match = _SPEC.fullmatch(header)
    if match is None:
        return None  # another unit, several ranges, or garbage: ignore
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None  # "bytes=-" is not a range
    if first:
        if last and _before(last, first):
            return None  # last < first: an invalid range-spec, so the header is ignored
        start = _position(first)
        end = _position(last) + 1 if last else size
        if start >= size:
            raise _unsatisfiable(size)
        return ByteRange(start, min(end, size))
    suffix = _position(last)
    if suffix == 0 or size == 0:
        raise _unsatisfiable(size)
    return ByteRange(max(0, size - suffix), size)


def content_range(byte_range: ByteRange, size: int) -> str:
    """The ``Content-Range`` value of a 206 response."""
    return f"bytes {byte_range.start}-{byte_range.end - 1}/{size}"


def _unsatisfiable(size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(
        f"The requested range is not satisfiable for an image of {size} bytes.",
        headers={"Content-Range": f"bytes */{size}"},
    )
