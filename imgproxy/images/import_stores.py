"""Which stores an import writes to: Glance's ``stores``, ``all_stores`` and ``x-image-meta-store``.

Stores are named as ``/v2/info/stores`` lists them; an image's locations remember their
store (``metadata.store``). Only stores that can be written take imports.
"""

from __future__ import annotations

from typing import Any

from backends import Backends, WriteBackend

from ..errors import BadRequest, Conflict

__all__ = ["ImportStores"]


class ImportStores:
    """The import's view of the configured stores (:class:`backends.Backends`)."""

    def __init__(self, backends: Backends) -> None:
        self._backends = backends

    def names(self) -> list[str]:
        """The writable stores, in configuration order."""
        return [name for name in self._backends.names if not self._backends.read_only(name)]

    def default(self) -> str:
        return self._backends.default_name

    def writer(self, name: str) -> WriteBackend | None:
        """The store called ``name``, if it is configured and can be written."""
        return self._backends.writable(name) if name in self._backends.names else None

    def of_location(self, location: dict[str, Any]) -> str | None:
        """The store holding one of an image's locations."""
        store = (location.get("metadata") or {}).get("store")
        return str(store) if store else self._backends.store_of(str(location.get("url") or ""))

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
