"""Interoperable image import, the request side: stage, import, and the tasks it shows.

``PUT /v2/images/{id}/stage`` keeps glance-direct's data in the staging area (the image
turns ``uploading``); ``POST /v2/images/{id}/import`` checks the request as Glance does
(its status rules, policy, stores, web-download's URL filter), creates the task and takes
the image's import lock in one transaction, and starts the import as a task of the service
(:mod:`imgproxy.images.import_runs`), never of the request: the client gets 202 at once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from anyio import CancelScope

from .. import policy
from ..attrs import is_uuid
from ..context import RequestContext
from ..errors import BadRequest, Conflict, Forbidden, Gone, NotFound, PayloadTooLarge
from ..formats import FormatRefused
from ..import_records import ImportRecords
from ..owners import current_owner
from ..registry import Registry, journal_key, stream_prefix
from ..tasks import TaskTable, new_task
from ..urlfilter import ImportFilter, UrlFilter, UrlRefused
from .import_runs import ImportRunner
from .import_stores import ImportStores
from .records import BodyReader
from .remote_glance import GlanceRegions
from .staging import StagingArea
from .uploads import inspector_for, refused

if TYPE_CHECKING:
    from ..service import Service

__all__ = ["Imports"]

log = logging.getLogger("imgproxy.imports")


def _check_body(body: Any, enabled: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """``(method name, method)`` of an import body; 400 as Glance's deserializer answers."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    method = body.get("method")
    if not isinstance(method, dict):
        raise BadRequest("Import request requires a 'method' field.")
    name = method.get("name")
    if not isinstance(name, str):
        raise BadRequest("Import request requires a 'name' field.")
    if name not in enabled:
        raise BadRequest(f"Unknown import method name '{name[:64]}'.")
    for key, default in (("all_stores_must_succeed", True), ("all_stores", False)):
        if not isinstance(body.get(key, default), bool):
            raise BadRequest(f"'{key}' must be boolean value only")
    if "stores" in body and not (isinstance(body["stores"], list)
                                 and all(isinstance(s, str) for s in body["stores"])):
        raise BadRequest("'stores' must be a list of store identifiers.")
    return name, method


def _status_rule(name: str) -> Any:
    """The image checks Glance makes before an import (409 each)."""

    def check(record: dict[str, Any]) -> None:
        status = record["status"]
        if status == "active" and name != "copy-image":
            raise Conflict("Image with status active cannot be target for import")
        if status != "active" and name == "copy-image":
            raise Conflict("Only images with status active can be targeted for copying")
        if status != "queued" and name in ("web-download", "glance-download"):
            raise Conflict(f"Image needs to be in 'queued' state to use '{name}' method")
        if status != "uploading" and name == "glance-direct":
            raise Conflict("Image needs to be staged before 'glance-direct' method can be used")
        if not record.get("container_format"):
            raise Conflict("'container_format' needs to be set before import")
        if not record.get("disk_format"):
            raise Conflict("'disk_format' needs to be set before import")

    return check


def _ids_with_status(registry: Registry, status: str) -> list[str]:
    with registry.read() as txn:
        return [image_id for _, image_id in registry.walk(txn, stream_prefix("s", status))]


class Imports:
    """The import workflows of one process (on the event loop)."""

    def __init__(self, service: "Service") -> None:
        self._s = service
        settings = service.settings
        self.tasks = TaskTable(service.env)
        self.records = ImportRecords(service.registry, self.tasks)
        self.staging = StagingArea(settings.data_dir / "staging")
        self.url_filter = UrlFilter(ImportFilter.from_mapping(settings.extra.get("import_filtering_opts", {})))
        self.regions = GlanceRegions.from_mapping(settings.extra.get("glance_download", {}))
        self.stores = ImportStores(service.backends)
        self.runner = ImportRunner(service, self)
        self.self_url = settings.worker_self_reference_url or f"http://{settings.host}:{settings.port}"

    @property
    def methods(self) -> tuple[str, ...]:
        return self._s.settings.enabled_import_methods

    # ---- stage ------------------------------------------------------------------------

    async def stage(self, ctx: RequestContext, image_id: str, body: AsyncIterator[bytes]) -> None:
        """Keep ``body`` as the staged data of a queued image (-> ``uploading``).

        NotFound (glance-direct not offered, or image not visible), Forbidden, Conflict
        (not queued), PayloadTooLarge, ServiceUnavailable (too many uploads), Gone
        (deleted meanwhile); whatever ``body`` raises. On failure the image is queued again
        and nothing is kept.
        """
        if "glance-direct" not in self.methods:
            raise NotFound("'glance-direct' method is not available at this site.")
        service = self._s
        record = service.registry.get_visible(ctx, image_id)
        policy.check_write_role(ctx)
        policy.check_modify(ctx, record)
        cap = service.settings.image_size_cap
        async with service.images.uploads.slot():
            await service.writer.run(self.records.begin_stage, image_id)
            try:
                size = await self.staging.receive(image_id, body, cap, lambda limit: PayloadTooLarge(
                    f"The incoming image is too large: the limit is {limit} bytes.", headers={"Connection": "close"}),
                    inspector_for(record))
            except BaseException as exc:
                with CancelScope(shield=True):
                    await service.writer.run(self.records.fail_stage, image_id)
                if isinstance(exc, FormatRefused):
                    raise refused(exc, record.get("disk_format")) from exc
                raise
        if not await service.writer.run(self.records.end_stage, image_id, size, self.self_url):
            self.staging.remove(image_id)
            raise Gone(f"Image {image_id} could not be found after staging; it may have been deleted.")

    # ---- import -----------------------------------------------------------------------

    async def start(self, ctx: RequestContext, image_id: str, body: BodyReader, headers: Mapping[str, str],
                    token: str | None, *, legacy_input: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Check an import request and start it in the background (the route answers 202);
        returns its task (None when a copy has nothing to do).

        ``token`` is the caller's, forwarded to glance-download's remote API (kept in memory
        only). ``legacy_input``: the run is a legacy ``import`` task's (``POST /v2/tasks``,
        :mod:`imgproxy.images.legacy_tasks`), whose web-download does not depend on the
        enabled import methods; its task shows that input. Raises NotFound, Forbidden,
        BadRequest, Conflict as Glance answers.
        """
        service = self._s
        record = service.registry.get_visible(ctx, image_id)
        request = await body()
        name, method = _check_body(request, self.methods if legacy_input is None else ("web-download",))
        check = _status_rule(name)
        check(record)
        if name == "glance-download":
            self._check_glance_download(method)
        if name == "copy-image":
            if not ctx.is_admin:
                raise Forbidden("You are not authorized to copy images to other stores (admin only).")
        else:
            policy.check_write_role(ctx)
            policy.check_modify(ctx, record)
        stores = self.stores.requested(request, headers.get("x-image-meta-store"), record, copy=name == "copy-image")
        if name == "copy-image":
            self._check_no_copy_pending_delete(image_id, stores)
        if not stores:
            log.info("image %s is in every store already; nothing to copy", image_id)
            return None
        if name == "web-download":
            try:
                await self.url_filter.pin_async(method.get("uri") or "")
            except UrlRefused as exc:
                raise BadRequest(f"URI for web-download does not pass filtering: {str(method.get('uri'))[:256]} "
                                 f"({exc})") from None
        task = new_task(str(uuid.uuid4()), image_id=image_id, owner=ctx.project_id or None, user_id=ctx.user_id or None,
                        request_id=f"req-{uuid.uuid4()}", runner=current_owner(),
                        task_input={"image_id": image_id, "import_req": request, "backend": stores},
                        shown_input=legacy_input, kind="api_image_import" if legacy_input is None else "import")
        await service.writer.run(self.records.begin, image_id, task, stores, check)
        self.runner.start(task, token)
        return task

    def _check_no_copy_pending_delete(self, image_id: str, stores: list[str]) -> None:
        """409 for a store whose earlier copy of the image is deleted but not yet reaped: the
        copy would be written where the reaper is about to delete (same object names)."""
        for store in stores:
            if self._s.registry.pending_deletes(journal_key(image_id, store)):
                raise Conflict(f"Image's earlier copy in store '{store}' is still being deleted; "
                               "copy it there again once that is done")

    def _check_glance_download(self, method: dict[str, Any]) -> None:
        for key in ("glance_region", "glance_image_id"):
            if key not in method:
                raise BadRequest(f"'{key}' needs to be set for glance-download import method")
        if not is_uuid(method["glance_image_id"]):
            raise BadRequest(f"Remote image id does not look like a UUID: {str(method['glance_image_id'])[:64]}")
        method.setdefault("glance_service_interface", "public")
        try:
            self.regions.find(str(method["glance_region"]), str(method["glance_service_interface"]))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None

    # ---- tasks ------------------------------------------------------------------------

    async def image_tasks(self, ctx: RequestContext, image_id: str) -> list[dict[str, Any]]:
        """The tasks of an image the caller may see (404 otherwise)."""
        self._s.registry.get_visible(ctx, image_id)
        tasks = self.tasks.for_image(image_id)
        return tasks if ctx.is_admin else [t for t in tasks if t.get("owner") == ctx.project_id]

    def check_tasks_api(self, ctx: RequestContext) -> None:
        """Glance's ``tasks_api_access``: admins only."""
        if not ctx.is_admin:
            raise Forbidden("You are not authorized to use the tasks API (admin only).")

    async def get_task(self, ctx: RequestContext, task_id: str) -> dict[str, Any]:
        self.check_tasks_api(ctx)
        task = self.tasks.get(task_id) if is_uuid(task_id) else None
        if task is None:
            raise NotFound(f"Task with the given ID {task_id[:64]} not found")
        return task

    async def list_tasks(self, ctx: RequestContext) -> list[dict[str, Any]]:
        self.check_tasks_api(ctx)
        return await self._s.readers.run(self.tasks.all)

    # ---- recovery ---------------------------------------------------------------------

    async def recover(self) -> int:
        """Fail imports whose process died, requeue stages it cut, sweep staged leftovers."""
        service = self._s
        failed = 0
        for task in await service.readers.run(self.records.orphans):
            await self.runner.fail_orphan(task)
            failed += 1
        uploading = await service.readers.run(_ids_with_status, service.registry, "uploading")
        for image_id in await service.writer.run(self.records.requeue_orphaned_stages, uploading):
            log.warning("image %s was left uploading by a stage whose process died; it is queued again", image_id)
            self.staging.remove(image_id)

        def keep(image_id: str) -> bool:
            record = service.registry.get(image_id)
            return record is not None and record.get("status") in ("uploading", "importing")

        await service.readers.run(self.staging.sweep, keep, service.settings.stale_temp_age)
        return failed
