"""The configured stores, by name (Glance's multiple back ends), and readers of other locations.

Each configured store is one backend instance, made at start-up from its :class:`StoreConfig`
(its id, URL and that kind's options). Uploads go to one store (the default unless asked);
an image location names the store that holds it (``metadata.store``), or is recognised as
inside one by its URL, or (an http URL added through the locations API) is read by a reader
made on demand for its scheme, with that scheme's options table (``[http]``, ``[s3]``...).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .base import BackendError, BackendUnavailable, CheckableBackend, ReadBackend, WriteBackend

__all__ = ["Backends", "StoreConfig", "UnknownScheme", "UnknownStore", "STORE_KINDS", "check_store"]

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

# URL scheme of a configured store -> its kind, as Glance's store types name them.
STORE_KINDS: dict[str, str] = {"file": "file", "s3": "s3", "swift": "swift", "http": "http", "https": "http"}


class UnknownScheme(BackendError):
    """No backend handles this URL scheme."""


class UnknownStore(BackendError):
    """No store of that name is configured."""


@dataclass(frozen=True)
class StoreConfig:
    """One configured store. ``options`` are its kind's options (they may hold secrets:
    never in ``repr``); ``weight`` orders an image's copies for reads (highest first)."""

    name: str
    url: str
    options: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    description: str = ""
    weight: int = 0

    @property
    def kind(self) -> str:
        return STORE_KINDS.get(urlsplit(self.url).scheme, urlsplit(self.url).scheme)


def _load(scheme: str) -> Any:
    try:
        target = _SCHEMES[scheme]
    except KeyError:
        raise UnknownScheme(f"no store handles {scheme!r} URLs") from None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def check_store(config: StoreConfig) -> None:
    """Check a store's URL and options without building it or touching disk or network.

    Raises ``ValueError`` saying what is wrong (never a secret's value).
    """
    scheme = urlsplit(config.url).scheme
    if scheme not in STORE_KINDS:
        raise ValueError(f"url {config.url!r}: a store is one of {', '.join(sorted(STORE_KINDS))}:// URLs")
    try:
        _load(scheme).validate(config.url, config.options)
    except BackendError as exc:
        raise ValueError(f"url: {exc}") from exc


class Backends:
    """The configured stores by name, plus one reader per other scheme, made on demand.

    Owned by the app's lifespan, which calls :meth:`aclose`. Lives on the event loop.
    """

    def __init__(self, stores: Sequence[StoreConfig], default: str,
                 reader_options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.configs: dict[str, StoreConfig] = {c.name: c for c in stores}
        if default not in self.configs:
            raise ValueError(f"the default store {default!r} is not configured")
        self.default_name = default
        self._reader_options = dict(reader_options or {})
        # One instance per store, made now: a store that cannot even be built (a file store
        # whose directory cannot be made) stops the start-up.
        self._stores: dict[str, ReadBackend] = {
            c.name: _load(urlsplit(c.url).scheme).from_url(c.url, c.options) for c in stores
        }
        # Location URL prefix -> store name, to find the store of a location that does not say.
        self._prefixes = [(self._prefix(name), name) for name in self.configs]
        self._readers: dict[str, ReadBackend] = {}  # scheme -> reader of locations in no configured store

    def _prefix(self, name: str) -> str:
        backend = self._stores[name]
        location_for = getattr(backend, "location_for", None)
        if location_for is not None:
            return str(location_for("x"))[:-1]
        return self.configs[name].url.rstrip("/") + "/"

    @property
    def names(self) -> list[str]:
        """Store ids in configuration order."""
        return list(self.configs)

    @property
    def default(self) -> ReadBackend:
        return self._stores[self.default_name]

    def get(self, name: str) -> ReadBackend:
        """The store called ``name``; :class:`UnknownStore` if none is."""
        try:
            return self._stores[name]
        except KeyError:
            raise UnknownStore(f"no store called {name!r} is configured (stores: {', '.join(self.configs)})") from None

    def writable(self, name: str | None = None) -> WriteBackend | None:
        """The store ``name`` (default: the default store) if it can be written, else None.
        Raises :class:`UnknownStore`."""
        backend = self.get(self.default_name if name is None else name)
        return backend if isinstance(backend, WriteBackend) else None

    def read_only(self, name: str) -> bool:
        return not isinstance(self.get(name), WriteBackend)

    def store_of(self, location: str) -> str | None:
        """The configured store that holds ``location``, by its URL; None if none does."""
        for prefix, name in self._prefixes:
            if location.startswith(prefix):
                return name
        return None

    @staticmethod
    def known_scheme(url: str) -> bool:
        return urlsplit(url).scheme in _SCHEMES

    def for_location(self, location: str, store: str | None = None) -> ReadBackend:
        """The backend that reads ``location``: the store it names (``store``), else the
        configured store its URL is in, else a reader for its scheme.

        Raises BackendError when none can (unknown scheme, or that kind of store has no
        usable options, e.g. no ``[swift]`` table).
        """
        name = store if store in self._stores else self.store_of(location)
        if name is not None:
            return self._stores[name]
        scheme = urlsplit(location).scheme
        backend = self._readers.get(scheme)
        if backend is None:
            try:
                backend = _load(scheme).from_url(location, self._reader_options.get(scheme, {}))
            except ValueError as exc:
                raise BackendUnavailable(f"no {scheme} store is configured to read {location}: {exc}",
                                         location=location) from exc
            self._readers[scheme] = backend
        return backend

    async def check(self, timeout: float) -> list[tuple[str, str]]:
        """Ask every configured store that can tell (:class:`CheckableBackend`) whether it
        works now (log in, look at its bucket or container...).

        Returns ``(store name, why not)`` for each that does not; never raises. Meant for
        start-up: the service starts anyway and logs them, and requests that need such a
        store answer 503 until it recovers.
        """
        problems: list[tuple[str, str]] = []
        for name, backend in self._stores.items():
            if not isinstance(backend, CheckableBackend):
                continue
            config = self.configs[name]
            where = getattr(backend, "name", "") or config.url
            # A store called by its kind (the one-store shorthand) is named by where it is.
            label = where if name == urlsplit(config.url).scheme else f"{name} ({where})"
            try:
                await asyncio.wait_for(backend.check(), timeout)
            except BackendError as exc:
                problems.append((label, str(exc)))
            except TimeoutError:
                problems.append((label, f"no answer within {timeout:g} s"))
        return problems

    async def sweep_temp(self, max_age: float) -> int:
        """Remove temp files older than ``max_age`` seconds (or of dead processes) from every
        store that keeps them (the file stores), off the loop; returns how many went."""
        removed = 0
        for backend in self._stores.values():
            sweep = getattr(backend, "sweep_temp", None)
            if sweep is not None:
                removed += int(await asyncio.to_thread(sweep, max_age))
        return removed

    async def aclose(self) -> None:
        for backend in [*self._stores.values(), *self._readers.values()]:
            await backend.aclose()
        self._stores.clear()
        self._readers.clear()
