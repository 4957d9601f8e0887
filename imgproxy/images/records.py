"""Image records: create, show, list, update (JSON patch), (de|re)activate, tags.

Every write runs on the process's LMDB writer thread, one transaction each; point reads
and listings the index serves page by page run on the loop; listings that may scan run
on the reader pool. Show and list answer with the views the registry stores.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .. import policy
from ..attrs import MAX_PROPERTIES, check_settable, check_tags, check_value, count_extra
from ..context import RequestContext
from ..errors import BadRequest, Forbidden, NotFound, PayloadTooLarge
from ..listing import Page, list_images, on_loop, plan_for
from ..listing_query import ListQuery
from ..patch import apply_patch, parse_patch
from ..registry import utc_now

if TYPE_CHECKING:
    from ..service import Service

__all__ = ["ImageRecords", "BodyReader", "new_record"]

# The request's JSON body, read only once the service has authorized the call (so a
# caller that may not see the image gets 404 whatever its body says, as in Glance).
BodyReader = Callable[[], Awaitable[Any]]


def new_record(ctx: RequestContext, body: Any) -> dict[str, Any]:
    """A queued image record from a create request body (400/403/413 on bad input)."""
    if not isinstance(body, dict):
        # Glance answers a JSON array (or any non-object) with 500; this is a client error.
        raise BadRequest("The request body must be a JSON object.")
    iso, us = utc_now()
    record: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "name": None,
        "status": "queued",
        "visibility": "shared",
        "protected": False,
        "os_hidden": False,
        "owner": ctx.project_id or None,  # a caller with no project (noauth): no owner, as Glance
        "disk_format": None,
        "container_format": None,
        "min_disk": 0,
        "min_ram": 0,
        "size": None,
        "virtual_size": None,
        "checksum": None,
        "os_hash_algo": None,
        "os_hash_value": None,
        "created_at": iso,
        "updated_at": iso,
        "tags": [],
        "_created_us": us,
        "_locations": [],
    }
    for key, value in body.items():
        check_settable(ctx, key)
        record[key] = check_value(ctx, key, value)
    if count_extra(record) > MAX_PROPERTIES:
        raise PayloadTooLarge(f"Maximum number of image properties exceeded ({MAX_PROPERTIES}).")
    return record


def _action_change(target: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def change(r: dict[str, Any]) -> dict[str, Any]:
        # Glance: repeating the action is a no-op; any other state is 403.
        if r["status"] == target:
            return r
        source = "active" if target == "deactivated" else "deactivated"
        if r["status"] != source:
            verb = "deactivate" if target == "deactivated" else "reactivate"
            raise Forbidden(f"Not allowed to {verb} image in status '{r['status']}'")
        r["status"] = target
        return r

    return change


def _tag_change(image_id: str, tag: str, add: bool) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def change(r: dict[str, Any]) -> dict[str, Any]:
        tags = list(r.get("tags") or [])
        if add:
            if tag not in tags:
                r["tags"] = check_tags([*tags, tag])
        else:
            if tag not in tags:
                raise NotFound(f"Tag {tag} not found on image {image_id}.")
            r["tags"] = [t for t in tags if t != tag]
        return r

    return change


class ImageRecords:
    """The metadata workflows. Raises :class:`imgproxy.errors.ApiError` subclasses:
    NotFound (not visible to the caller, never 403 for that), Forbidden, BadRequest,
    Conflict."""

    def __init__(self, service: "Service") -> None:
        self._s = service

    async def create(self, ctx: RequestContext, body: BodyReader) -> dict[str, Any]:
        """A new queued image from the create body; returns its record."""
        policy.check_write_role(ctx)
        record = new_record(ctx, await body())
        await self._s.writer.run(self._s.registry.create, record)
        return record

    async def show(self, ctx: RequestContext, image_id: str) -> bytes:
        """The image's view JSON (stored bytes); NotFound unless ``ctx`` may see it."""
        return self.view(ctx, image_id)

    def view(self, ctx: RequestContext, image_id: str) -> bytes:
        """:meth:`show`, for callers that cannot await (one LMDB point read: fine on the loop)."""
        return self._s.registry.visible_view(ctx, image_id)

    async def list(self, ctx: RequestContext, query: ListQuery) -> Page:
        """One page (see :func:`imgproxy.listing.list_images`).

        On the loop when the index serves it page by page; otherwise (a filter or sort no
        index serves reads candidate records) on the reader pool.
        """
        plan = plan_for(ctx, query)
        if on_loop(plan, query):
            return list_images(self._s.registry, ctx, query, plan)
        return await self._s.readers.run(list_images, self._s.registry, ctx, query, plan)

    async def _writable(self, ctx: RequestContext, image_id: str) -> None:
        """Visible (else 404) to a caller that may write (else 403) and may change it (else 403)."""
        record = self._s.registry.get_visible(ctx, image_id)
        policy.check_write_role(ctx)
        policy.check_modify(ctx, record)

    async def _change(self, ctx: RequestContext, image_id: str,
                      change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        updated: dict[str, Any] = await self._s.writer.run(
            lambda: self._s.registry.update(image_id, change, ctx=ctx))
        return updated

    async def update(self, ctx: RequestContext, image_id: str, body: BodyReader, media_type: str) -> dict[str, Any]:
        """Apply a JSON patch body of ``media_type`` (checked by the caller); the new record."""
        await self._writable(ctx, image_id)
        changes = parse_patch(ctx, await body(), media_type)
        return await self._change(ctx, image_id, lambda r: apply_patch(r, changes, media_type))

    async def set_active(self, ctx: RequestContext, image_id: str, active: bool) -> None:
        """Reactivate (``active``) or deactivate an image; a no-op if it already is."""
        await self._writable(ctx, image_id)
        await self._change(ctx, image_id, _action_change("active" if active else "deactivated"))

    async def add_tag(self, ctx: RequestContext, image_id: str, tag: str) -> None:
        await self._writable(ctx, image_id)
        check_tags([tag])
        await self._change(ctx, image_id, _tag_change(image_id, tag, add=True))

    async def remove_tag(self, ctx: RequestContext, image_id: str, tag: str) -> None:
        await self._writable(ctx, image_id)
        await self._change(ctx, image_id, _tag_change(image_id, tag, add=False))
