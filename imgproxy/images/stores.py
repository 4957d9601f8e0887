"""The stores as clients see them (Glance's multiple back ends): discovery, and copying an
image into more stores (the ``copy-image`` import method).

A copy reads the image through the cache (so it also fills it) from the copies it has,
writes it to each asked store in turn and appends that location (``metadata.store``) in
the transaction that checks the image is still there; an image deleted meanwhile gets its
new object deleted. While it runs the image carries Glance's ``os_glance_importing_to_stores``
(the stores still to do, which is also the lock against a second import); a store that
failed ends in ``os_glance_failed_import``. The lock names the process that holds it, so one
left by a process that died is taken over by the next import.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from backends import BackendError, ByteRange, ReadBackend, WriteBackend
from cache import CacheError

from ..context import RequestContext
from ..errors import ApiError, BadRequest, Conflict, Forbidden
from ..owners import current_owner, owner_alive
from ..sources import resolve_source
from .records import BodyReader

if TYPE_CHECKING:
    from ..service import Service

__all__ = ["ImageStores", "COPY_IMAGE"]

log = logging.getLogger("imgproxy.stores")

COPY_IMAGE = "copy-image"
IMPORTING = "os_glance_importing_to_stores"
FAILED = "os_glance_failed_import"


def _csv(value: Any) -> list[str]:
    return [s for s in str(value or "").split(",") if s]


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


def _parse_copy(body: Any) -> tuple[list[str] | None, bool]:
    """``(stores or None for all stores, all_stores_must_succeed)`` of an import body; 400 otherwise."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    method = body.get("method")
    if not isinstance(method, dict) or not isinstance(method.get("name"), str):
        raise BadRequest("The import body needs a method object with a name.")
    if method["name"] != COPY_IMAGE:
        raise BadRequest(f"Import method {method['name'][:64]!r} is not supported here; "
                         f"the only one is {COPY_IMAGE!r}.")
    must_succeed = body.get("all_stores_must_succeed", True)
    if not isinstance(must_succeed, bool):
        raise BadRequest("all_stores_must_succeed must be a boolean.")
    stores, all_stores = body.get("stores"), body.get("all_stores", False)
    if not isinstance(all_stores, bool):
        raise BadRequest("all_stores must be a boolean.")
    if all_stores and stores is not None:
        raise BadRequest("Give either stores or all_stores, not both.")
    if all_stores:
        return None, must_succeed
    if not isinstance(stores, list) or not stores or not all(isinstance(s, str) for s in stores):
        raise BadRequest("copy-image needs stores (a list of store ids) or all_stores = true.")
    return list(dict.fromkeys(stores)), must_succeed


class ImageStores:
    """Store discovery and the copy workflow of one process. Lives on the event loop."""

    def __init__(self, service: "Service") -> None:
        self._s = service

    # ---- discovery ------------------------------------------------------------------

    def ids(self) -> list[str]:
        """Every store id, in configuration order (Glance's ``OpenStack-image-store-ids``)."""
        return self._s.backends.names

    def import_methods(self) -> list[str]:
        """The import methods that can work here: copying needs a second writable store."""
        backends = self._s.backends
        writable = [name for name in backends.names if not backends.read_only(name)]
        return [COPY_IMAGE] if len(writable) > 1 else []

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

    # ---- copy-image -----------------------------------------------------------------

    async def copy(self, ctx: RequestContext, image_id: str, body: BodyReader) -> None:
        """Start copying an active image into more stores (``POST /v2/images/{id}/import``
        with method ``copy-image``), for admins as Glance's default policy. Returns once it
        runs: 404 not visible, 403 not admin, 400 bad body or a store that already holds
        it, 409 not active, a store not configured or read-only, or another import running."""
        registry, backends = self._s.registry, self._s.backends
        registry.get_visible(ctx, image_id)
        if not ctx.is_admin:
            raise Forbidden("Only administrators may copy images between stores.")
        wanted, must_succeed = _parse_copy(await body())
        record = registry.get_visible(ctx, image_id)
        if record["status"] != "active":
            raise Conflict("Only images with status active can be targeted for copying")
        for name in wanted or ():
            if name not in backends.configs or backends.read_only(name):
                raise Conflict(f"Store {name[:64]!r} is not a writable store of this service.")
        held = {(loc.get("metadata") or {}).get("store") for loc in record.get("_locations") or []}
        if wanted is None:
            targets = [n for n in backends.names if not backends.read_only(n) and n not in held]
        else:
            present = [n for n in wanted if n in held]
            if present:
                raise BadRequest(f"Image is already present at store '{present[0]}'")
            targets = wanted
        if not targets:
            return  # in every store already
        owner = current_owner()

        def lock(r: dict[str, Any]) -> dict[str, Any]:
            if _csv(r.get(IMPORTING)) and owner_alive(str(r.get("_copy_owner", ""))):
                raise Conflict(f"New operation on image '{image_id}' is not permitted as prior "
                               "operation is still in progress")
            if r["status"] != "active":
                raise Conflict("Only images with status active can be targeted for copying")
            r[IMPORTING], r["_copy_owner"] = ",".join(targets), owner
            r.pop(FAILED, None)
            return r

        await self._s.writer.run(lambda: registry.update(image_id, lock))
        self._s.spawn(self._copy_all(image_id, targets, must_succeed), f"imgproxy-copy-{image_id}")

    async def _copy_all(self, image_id: str, targets: list[str], must_succeed: bool) -> None:
        remaining = list(targets)
        try:
            while remaining:
                name = remaining[0]
                location = await self._copy_one(image_id, name)
                remaining.pop(0)
                failed = [name] if location is None else []
                if failed and must_succeed:
                    failed, remaining = failed + remaining, []
                if not await self._record(image_id, name, location, remaining, failed):
                    return
        except BaseException:
            await self._record(image_id, "", None, [], remaining)
            raise

    async def _copy_one(self, image_id: str, name: str) -> str | None:
        """Write the image into store ``name``; its new location, or None (logged) if it failed."""
        service = self._s
        record = service.registry.get(image_id)
        store = service.backends.get(name)
        if record is None or record.get("status") not in ("active", "deactivated") or not isinstance(store, WriteBackend):
            return None
        try:
            source = await resolve_source(service, record)
            if source is None:
                return None
            writer = await store.open_writer(image_id)
        except BackendError as exc:
            log.error("copy of image %s to store %s could not start: %s", image_id, name, exc)
            return None
        try:
            size = source.manifest.size
            async for piece in service.cache.read(image_id, source.manifest, ByteRange(0, size), source.backend,
                                                  source.location, count_hit=False):
                await writer.write(piece)  # type: ignore[arg-type]
            return await writer.commit()
        except (BackendError, CacheError, OSError) as exc:
            await writer.abort()
            log.error("copy of image %s to store %s failed: %s", image_id, name, exc)
            return None
        except BaseException:
            await writer.abort()
            raise

    async def _record(self, image_id: str, name: str, location: str | None, remaining: list[str],
                      failed: list[str]) -> bool:
        """Append the new copy's location (if any) and the progress; False when the image
        is no longer there to copy (the new object is then deleted)."""
        service = self._s

        def change(r: dict[str, Any]) -> dict[str, Any]:
            if r["status"] not in ("active", "deactivated"):
                raise Conflict("the image changed during the copy")
            if location is not None:
                r["_locations"] = [*r.get("_locations", []), {"url": location, "metadata": {"store": name}}]
            if remaining:
                r[IMPORTING] = ",".join(remaining)
            else:
                r.pop(IMPORTING, None)
                r.pop("_copy_owner", None)
            if failed:
                r[FAILED] = ",".join([*_csv(r.get(FAILED)), *failed])
            return r

        try:
            await service.writer.run(lambda: service.registry.update(image_id, change))
        except ApiError as exc:  # gone (NotFound) or changed (Conflict)
            if location is not None:
                backend = service.backends.get(name)
                if isinstance(backend, WriteBackend):
                    try:
                        await backend.delete(location)
                    except BackendError:
                        log.warning("could not delete the copy of gone image %s at %s", image_id, location)
            log.info("image %s changed during its copy to %s (%s); copy dropped", image_id, name, exc)
            return False
        if location is not None:
            log.info("image %s copied to store %s (%s)", image_id, name, location)
        return True
