"""A store's read through the lean HTTP client (:mod:`backends.http_fast`), told as that store's.

The s3 and swift stores both read ranges through the lean client; what its body raises
names no store, so each re-raises it under its own name, and each closes the body however
the read ends, so its connection goes back to the pool (or is dropped) at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .base import BackendError, BackendUnavailable

if TYPE_CHECKING:
    from .http_fast import FastBody

__all__ = ["StoreReader", "store_read"]


@contextmanager
def store_read(body: FastBody, failed: str, location: str) -> Iterator[FastBody]:
    """Hold ``body`` while its pieces are read; close it when the block ends (read whole,
    failed, or closed early by the reader). A :class:`BackendError` raised in the block
    comes out as :class:`BackendUnavailable` ``f"{failed}: {error}"`` at ``location``
    (``failed`` names the store, e.g. ``"the s3 store images failed"``)."""
    try:
        yield body
    except BackendError as exc:
        raise BackendUnavailable(f"{failed}: {exc}", location=location) from exc
    finally:
        body.close()


class StoreReader:
    """A :class:`backends.base.RangeReader` over ``body``: the kernel puts the bytes where
    :meth:`into` says; failures are told as :func:`store_read` tells them."""

    def __init__(self, body: FastBody, failed: str, location: str) -> None:
        self._body, self._failed, self._location = body, failed, location

    async def into(self, view: memoryview) -> AsyncIterator[int]:
        got = 0
        try:
            async for count in self._body.read_into(view):
                got += count
                yield count
        except BackendError as exc:
            raise BackendUnavailable(f"{self._failed}: {exc}", location=self._location) from exc
        if got < len(view):
            raise BackendUnavailable(f"{self._failed}: the read ended {len(view) - got} bytes short",
                                     location=self._location)

    async def aclose(self) -> None:
        self._body.close()
