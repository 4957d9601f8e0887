"""Image members: sharing a ``visibility: shared`` image with other projects.

Glance's rules: only shared images have members (403 otherwise); the owner (or an admin)
adds and removes members; only the member itself accepts, rejects or resets its
membership; a member sees only its own membership, the owner sees all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import policy
from ..context import RequestContext
from ..errors import BadRequest, Forbidden, NotFound, PayloadTooLarge
from ..registry import MEMBER_STATUSES
from .records import BodyReader

if TYPE_CHECKING:
    from ..service import Service

__all__ = ["ImageMembers", "MAX_MEMBERS"]

MAX_MEMBERS = 128  # Glance's image_member_quota default


def _shared_only(record: dict[str, Any]) -> None:
    if record.get("visibility") != "shared":
        raise Forbidden("Only shared images have members.")


def _owner_check(ctx: RequestContext) -> Callable[[dict[str, Any]], None]:
    def check(record: dict[str, Any]) -> None:
        _shared_only(record)
        policy.check_write_role(ctx)
        if not policy.may_modify(ctx, record):
            raise Forbidden("Only the image owner may change its members.")

    return check


def _may_see_all(ctx: RequestContext, record: dict[str, Any]) -> bool:
    return ctx.is_admin or policy.is_owner(ctx, record)


class ImageMembers:
    """Membership workflows; rows are the registry's member dicts."""

    def __init__(self, service: "Service") -> None:
        self._s = service

    async def add(self, ctx: RequestContext, image_id: str, body: BodyReader) -> dict[str, Any]:
        """Add the body's ``{"member": ...}`` as pending (owner or admin only)."""
        registry = self._s.registry
        _owner_check(ctx)(registry.get_visible(ctx, image_id))
        doc = await body()
        member = doc.get("member") if isinstance(doc, dict) else None
        if not isinstance(member, str) or not member.strip() or len(member) > 255:
            raise BadRequest('The request body must be {"member": "<project id>"}.')
        if len(registry.list_members(image_id)) >= MAX_MEMBERS:
            raise PayloadTooLarge(f"Maximum number of image members exceeded ({MAX_MEMBERS}).")
        row: dict[str, Any] = await self._s.writer.run(
            lambda: registry.add_member(image_id, member, check=_owner_check(ctx)))
        return row

    async def list(self, ctx: RequestContext, image_id: str) -> list[dict[str, Any]]:
        """The memberships ``ctx`` may see: all for the owner or an admin, else its own."""
        record = self._s.registry.get_visible(ctx, image_id)
        _shared_only(record)
        rows = self._s.registry.list_members(image_id)
        if not _may_see_all(ctx, record):
            rows = [r for r in rows if r["member_id"] == ctx.project_id]
        return rows

    def _visible(self, ctx: RequestContext, image_id: str, member: str) -> dict[str, Any]:
        record = self._s.registry.get_visible(ctx, image_id)
        _shared_only(record)
        if not _may_see_all(ctx, record) and member != ctx.project_id:
            raise NotFound(f"{member} is not a member of image {image_id}")
        return record

    async def show(self, ctx: RequestContext, image_id: str, member: str) -> dict[str, Any]:
        self._visible(ctx, image_id, member)
        row = self._s.registry.get_member(image_id, member)
        if row is None:
            raise NotFound(f"{member} is not a member of image {image_id}")
        return row

    async def set_status(self, ctx: RequestContext, image_id: str, member: str, body: BodyReader) -> dict[str, Any]:
        """The member itself accepts, rejects or resets (``{"status": ...}``) its membership."""
        self._visible(ctx, image_id, member)
        if member != ctx.project_id:
            raise Forbidden("Only the member itself may change its membership status.")
        policy.check_write_role(ctx)
        doc = await body()
        status = doc.get("status") if isinstance(doc, dict) else None
        if status not in MEMBER_STATUSES:
            raise BadRequest(f"Invalid status {status!r}: must be one of {', '.join(MEMBER_STATUSES)}.")
        row: dict[str, Any] = await self._s.writer.run(self._s.registry.set_member_status, image_id, member, status)
        return row

    async def remove(self, ctx: RequestContext, image_id: str, member: str) -> None:
        self._visible(ctx, image_id, member)
        registry = self._s.registry
        await self._s.writer.run(lambda: registry.remove_member(image_id, member, check=_owner_check(ctx)))
