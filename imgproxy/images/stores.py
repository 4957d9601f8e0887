"""The stores as clients see them (Glance's multiple back ends): ``/v2/info/stores`` and its
detail, and the ids ``OpenStack-image-store-ids`` lists. Copying an image into more stores is
the ``copy-image`` import method (:mod:`imgproxy.images.imports`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from backends import ReadBackend

from ..context import RequestContext
from ..errors import Forbidden

if TYPE_CHECKING:
    from ..service import Service

__all__ = ["ImageStores"]

def _properties(kind: str, backend: ReadBackend) -> dict[str, Any]:
    """Glance's ``properties`` of a store of ``kind`` in ``/v2/info/stores/detail`` (no secrets)."""
    options = getattr(backend, "options", None)
    if kind == "file":
        return {"data_dir": str(getattr(backend, "root", "")), "thin_provisioning": False}
    if kind == "s3":
        return {"s3_store_large_object_size": getattr(options, "part_size", None),
                "s3_store_large_object_chunk_size": getattr(options, "part_size", None),
                "s3_store_thread_pools": getattr(options, "upload_concurrency", None)}
    if kind == "swift":
        return {"container": getattr(backend, "container", None),
                "large_object_size": getattr(options, "segment_size", None),
                "large_object_chunk_size": getattr(options, "segment_size", None)}
    return {}

class ImageStores:
    """Store discovery of one process."""

    def __init__(self, service: "Service") -> None:
        self._s = service

    # ---- discovery ------------------------------------------------------------------

    def ids(self) -> list[str]:
        """Every store id, in configuration order (Glance's ``OpenStack-image-store-ids``)."""
        return self._s.backends.names

    def info(self) -> list[dict[str, Any]]:
        """``/v2/info/stores``: Glance's fields, its string flags included."""
        backends = self._s.backends
        stores = []
        for name, config in backends.configs.items():
            store: dict[str, Any] = {"id": name}
            if config.description:
                store["description"] = config.description
            if name == backends.default_name:
                store["default"] = "true"
            if config.kind == "http":
                store["read-only"] = "true"
            stores.append(store)
        return stores

    def detail(self, ctx: RequestContext) -> list[dict[str, Any]]:
        """``/v2/info/stores/detail``, for admins: also each store's type, properties, weight."""
        if not ctx.is_admin:
            raise Forbidden("Only administrators may see the details of the stores.")
        backends = self._s.backends
        stores = self.info()
        for store in stores:
            config = backends.configs[store["id"]]
            store.update(type=config.kind, properties=_properties(config.kind, backends.get(config.name)),
                         weight=config.weight)
        return stores
