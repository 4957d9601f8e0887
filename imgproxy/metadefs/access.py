"""Who may see and change metadata definitions: Glance's default metadef policy.

- Reads (``get_metadef_*``, ``list_metadef_resource_types``): admins, or a caller of the
  owning project, or anyone for a public namespace (also one without an owner). Any role
  reads: ``member`` and ``admin`` imply ``reader``, as Keystone's role inference makes them.
- Writes (``add_``/``modify_``/``delete_metadef_*``): ``metadef_admin``, admins only.
- A namespace the caller may not see is 404 for every call, writes too, so its name does
  not leak; a visible one refuses a non-admin write with 403.
- Protected namespaces (Glance's domain model): the namespace, its objects, properties,
  tags and resource type associations cannot be deleted (403); updates are allowed, so an
  admin clears ``protected`` first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..context import RequestContext
from ..errors import Forbidden, NotFound

__all__ = ["is_visible", "check_admin", "visible_namespace", "writable_namespace", "check_deletable"]


def is_visible(ctx: RequestContext, namespace: Mapping[str, Any]) -> bool:
    if ctx.is_admin or namespace.get("owner") is None or namespace.get("visibility") == "public":
        return True
    return bool(namespace.get("owner") == ctx.project_id)


def check_admin(ctx: RequestContext, action: str) -> None:
    """Raise Forbidden unless the caller is an admin (Glance's ``metadef_admin`` rule)."""
    if not ctx.is_admin:
        raise Forbidden(f"You are not authorized to {action}: metadata definitions are changed by admins only.")


def visible_namespace(ctx: RequestContext, name: str, namespace: dict[str, Any] | None) -> dict[str, Any]:
    """``namespace`` if the caller may see it; 404 if it is missing or hidden."""
    if namespace is None or not is_visible(ctx, namespace):
        raise NotFound(f"Metadata definition namespace={name} was not found.")
    return namespace


def writable_namespace(ctx: RequestContext, name: str, namespace: dict[str, Any] | None, action: str) -> dict[str, Any]:
    """``namespace`` if the caller may change what is in it: 404 when hidden, then 403 for non-admins."""
    found = visible_namespace(ctx, name, namespace)
    check_admin(ctx, action)
    return found


def check_deletable(namespace: Mapping[str, Any], what: str) -> None:
    """Raise Forbidden when ``namespace`` is protected: nothing in it may be deleted."""
    if namespace.get("protected"):
        raise Forbidden(
            f"Metadata definition namespace={namespace['namespace']} is protected: its {what} cannot be deleted."
        )
