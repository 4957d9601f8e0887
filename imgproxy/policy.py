"""Who may see and change an image: Glance's visibility and ownership rules.

Pure functions over a record and a :class:`RequestContext`; membership is looked up
by the caller (the registry, inside its transaction) and passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .context import RequestContext
from .errors import Forbidden

__all__ = [
    "VISIBILITIES", "is_owner", "is_visible", "may_modify", "check_download", "check_modify", "check_write_role",
    "check_service", "check_admin", "check_add_location",
]

VISIBILITIES = ("public", "private", "shared", "community")


def is_owner(ctx: RequestContext, record: Mapping[str, Any]) -> bool:
    return record.get("owner") is not None and record.get("owner") == ctx.project_id


def is_visible(ctx: RequestContext, record: Mapping[str, Any], member_status: str | None) -> bool:
    """May ``ctx`` see ``record``?

    ``member_status`` is the caller's membership status on this image (None if not a
    member). A member sees a shared image whatever its membership status (Glance: the
    image can be shown and downloaded while pending; only listing needs "accepted").
    """
    if ctx.is_admin or is_owner(ctx, record):
        return True
    visibility = record.get("visibility")
    if visibility in ("public", "community"):
        return True
    if visibility == "shared":
        return member_status is not None
    return False


def may_modify(ctx: RequestContext, record: Mapping[str, Any]) -> bool:
    """Admins change anything; members of the owning project change its images."""
    return ctx.is_admin or (ctx.can_write and is_owner(ctx, record))


def check_write_role(ctx: RequestContext) -> None:
    """Raise Forbidden for callers that may only read (role ``reader``)."""
    if not ctx.can_write:
        raise Forbidden("You are not authorized to complete this action (read-only role).")


def check_download(ctx: RequestContext) -> None:
    """Raise Forbidden for readers: Glance's ``download_image`` default needs the member role
    (``role:admin or role:member and (...)``), even on images the reader may show."""
    if not ctx.can_write:
        raise Forbidden("You are not authorized to download image data (the reader role may only show images).")


def check_modify(ctx: RequestContext, record: Mapping[str, Any]) -> None:
    """Raise Forbidden unless ``ctx`` may change ``record``."""
    if not may_modify(ctx, record):
        raise Forbidden("You are not permitted to modify this image.")


def check_service(ctx: RequestContext, what: str) -> None:
    """Raise Forbidden unless ``ctx`` passes Glance's ``service_api`` (``role:service or
    role:admin`` of the caller's own token; a service token sent along does not count):
    calls kept for other services, such as ``fetch_image_location``."""
    if not ctx.is_service:
        raise Forbidden(f"Only administrators and services may {what}.")


def check_admin(ctx: RequestContext, what: str) -> None:
    """Raise Forbidden unless ``ctx`` is an admin (Glance's ``role:admin`` defaults, such as
    ``delete_image_location``)."""
    if not ctx.is_admin:
        raise Forbidden(f"Only administrators may {what}.")


def check_add_location(ctx: RequestContext, record: Mapping[str, Any]) -> None:
    """Raise Forbidden unless ``ctx`` may add a location to ``record``: Glance's
    ``add_image_location`` (``service_api``, or a member of the owning project), where a
    member must also send a service token with the ``service`` role (Nova's and Cinder's
    way). Glance lets a member alone add an http location when an http store is enabled;
    this service keeps adding locations to trusted callers."""
    if ctx.is_service:
        return
    if not ("service" in ctx.service_roles and "member" in ctx.roles and is_owner(ctx, record)):
        raise Forbidden("Only administrators and services may add image locations.")
