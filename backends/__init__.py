"""Upstream stores behind one async interface, chosen by URL scheme.

Backend classes are imported lazily, so a store's heavy dependencies stay optional.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from .base import (
    PIECE_SIZE,
    BackendCorrupt,
    BackendError,
    BackendFull,
    BackendNotFound,
    BackendUnavailable,
    ByteRange,
    CheckableBackend,
    LocalBackend,
    ReadBackend,
    WriteBackend,
    Writer,
    local_file,
)

__all__ = [
    "PIECE_SIZE",
    "BackendCorrupt",
    "BackendError",
    "BackendFull",
    "BackendNotFound",
    "BackendUnavailable",
    "ByteRange",
    "CheckableBackend",
    "LocalBackend",
    "local_file",
    "ReadBackend",
    "WriteBackend",
    "Writer",
    "Backends",
    "UnknownScheme",
]

# scheme -> "module:Class"; each class has ``from_url(url, options) -> instance``.
_SCHEMES: dict[str, str] = {
    "file": "backends.file:FileBackend",
    "http": "backends.http:HttpBackend",
    "https": "backends.http:HttpBackend",
    "s3": "backends.s3:S3Backend",
    "swift": "backends.swift:SwiftBackend",
    "glance+http": "backends.image_api:ImageApiBackend",
    "glance+https": "backends.image_api:ImageApiBackend",
}


class UnknownScheme(BackendError):
    """No backend handles this URL scheme."""


def _load(scheme: str) -> Any:
    try:
        target = _SCHEMES[scheme]
    except KeyError:
        raise UnknownScheme(f"no store handles {scheme!r} URLs") from None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


class Backends:
    """The configured default store plus one reader per other scheme, made on demand.

    ``default`` is where uploads go; :meth:`for_location` finds the backend that
    reads an existing image location (e.g. an http URL added through the
    locations API). Owned by the app's lifespan, which calls :meth:`aclose`.
    """

    def __init__(self, store_url: str, options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self._options = dict(options or {})
        self.store_url = store_url
        self._by_scheme: dict[str, ReadBackend] = {}
        scheme = urlsplit(store_url).scheme
        self.default: ReadBackend = _load(scheme).from_url(store_url, self._options.get(scheme, {}))
        self._by_scheme[scheme] = self.default
        self.default_scheme = scheme

    @staticmethod
    def known_scheme(url: str) -> bool:
        return urlsplit(url).scheme in _SCHEMES

    def for_location(self, location: str) -> ReadBackend:
        """The backend that reads ``location``. Raises BackendError when none can (unknown
        scheme, or that kind of store has no usable options, e.g. no ``[swift]`` table)."""
        scheme = urlsplit(location).scheme
        backend = self._by_scheme.get(scheme)
        if backend is None:
            try:
                backend = _load(scheme).from_url(location, self._options.get(scheme, {}))
            except ValueError as exc:
                raise BackendUnavailable(f"no {scheme} store is configured to read {location}: {exc}", location=location) from exc
            self._by_scheme[scheme] = backend
        return backend

    async def check(self, timeout: float) -> list[tuple[str, str]]:
        """Ask every store made so far that can tell (:class:`CheckableBackend`) whether it works
        now (log in, look at its bucket or container...).

        Returns ``(store, why not)`` for each that does not; never raises. Meant for start-up:
        the service starts anyway and logs them, and requests that need such a store answer 503
        until it recovers.
        """
        problems: list[tuple[str, str]] = []
        for scheme, backend in list(self._by_scheme.items()):
            if not isinstance(backend, CheckableBackend):
                continue
            name = str(getattr(backend, "name", "") or (self.store_url if backend is self.default else scheme))
            try:
                await asyncio.wait_for(backend.check(), timeout)
            except BackendError as exc:
                problems.append((name, str(exc)))
            except TimeoutError:
                problems.append((name, f"no answer within {timeout:g} s"))
        return problems

    @property
    def writable(self) -> WriteBackend | None:
        return self.default if isinstance(self.default, WriteBackend) else None

    async def aclose(self) -> None:
        for backend in self._by_scheme.values():
            await backend.aclose()
        self._by_scheme.clear()
