"""Which stores an import writes to: Glance's ``stores``, ``all_stores`` and ``x-image-meta-store``.

Stores are named as ``/v2/info/stores`` lists them; an image's locations remember their
store (``metadata.store``). Only stores that can be written take imports.
"""

from __future__ import annotations

from typing import Any

from backends import Backends, WriteBackend
from urllib.parse import urlsplit

from ..errors import BadRequest, Conflict

__all__ = ["ImportStores"]


class ImportStores:
    """The import's view of the configured stores."""

    def __init__(self, backends: Backends) -> None:
        self._backends = backends

    def names(self) -> list[str]:
        """The writable stores, the default first."""
        return [self.default()] if self._backends.writable is not None else []

    def default(self) -> str:
        return self._backends.default_scheme

    def writer(self, name: str) -> WriteBackend | None:
        """The store called ``name``, if it can be written."""
        return self._backends.writable if name == self.default() else None

    def of_location(self, location: dict[str, Any]) -> str | None:
        """The store holding one of an image's locations."""
        store = (location.get("metadata") or {}).get("store")
        if store:
            return str(store)
        url = str(location.get("url") or "")
        return self.default() if urlsplit(url).scheme == self.default() else None

    def requested(self, body: dict[str, Any], header: str | None, record: dict[str, Any], *, copy: bool) -> list[str]:
        """The stores an import request names (400/409 as Glance answers); for copy-image,
        without those that hold the image already (``all_stores``) or 400 if one does."""
        all_stores = bool(body.get("all_stores", False))
        if all_stores:
            if "stores" in body or header:
                raise BadRequest("All_stores parameter can't be used with x-image-meta-store header or stores parameter")
            stores = self.names()
        elif "stores" in body:
            if header:
                raise BadRequest("Stores parameter and x-image-meta-store header can't be both specified")
            stores = list(dict.fromkeys(body["stores"]))
        else:
            stores = [header or self.default()]
        known = self.names()
        for name in stores:
            if name not in known:
                raise Conflict(f"Unknown scheme '{name[:64]}' found in URI")
        if copy:
            present = {self.of_location(loc) for loc in record.get("_locations") or []}
            if all_stores:
                stores = [s for s in stores if s not in present]
            else:
                for name in stores:
                    if name in present:
                        raise BadRequest(f"Image is already present at store '{name}'")
        return stores
