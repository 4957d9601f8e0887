"""A request's headers: how large they may be, and reading them as a mapping.

One line may be as long as Glance's ``max_header_line``, all of them a few times that;
larger heads are answered 431 (:mod:`imgproxy.app`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

__all__ = ["MAX_HEADER_LINE", "MAX_HEADERS_TOTAL", "RawHeaders", "headers_too_large"]

MAX_HEADER_LINE = 16 * 1024
MAX_HEADERS_TOTAL = 64 * 1024


def headers_too_large(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """True when one of the (ASGI) ``headers`` or all of them are over the limits."""
    total = 0
    for name, value in headers:
        line = len(name) + len(value) + 4
        if line > MAX_HEADER_LINE:
            return True
        total += line
    return total > MAX_HEADERS_TOTAL


class RawHeaders(Mapping[str, str]):
    """A request's ASGI headers as a read-only mapping whose lookups answer as Starlette's
    ``Headers`` do (keys in any case, the first of repeated headers, values decoded as
    latin-1) at less cost: nothing is copied, no exception is raised for a missing header.
    For code that takes a ``Mapping[str, str]`` of headers
    (:meth:`imgproxy.auth.ImmediateAuthenticator.authenticate_now`). Its keys are the
    distinct header names."""

    __slots__ = ("_raw",)

    def __init__(self, raw: Sequence[tuple[bytes, bytes]]) -> None:
        self._raw = raw

    def get(self, key: str, default: Any = None) -> Any:
        name = key.lower().encode("latin-1")
        for found, value in self._raw:
            if found == name:
                return value.decode("latin-1")
        return default

    def __getitem__(self, key: str) -> str:
        value: str | None = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name.decode("latin-1") for name, _ in self._raw))

    def __len__(self) -> int:
        return len({name for name, _ in self._raw})
