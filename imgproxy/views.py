"""Records as clients see them: internal ``_`` fields dropped, links added."""

from __future__ import annotations

from typing import Any

__all__ = ["image_view", "member_view"]

_HIDDEN = frozenset({"os_glance_stage_host"})


def image_view(record: dict[str, Any]) -> dict[str, Any]:
    """The image JSON of Glance's API: every public field (nulls included), the ``stores``
    that hold its data (when any do), plus links."""
    # Glance hides where glance-direct's data is staged (os_glance_stage_host).
    view = {k: v for k, v in record.items() if not k.startswith("_") and k not in _HIDDEN}
    stores = [str(s) for loc in record.get("_locations") or [] if (s := (loc.get("metadata") or {}).get("store"))]
    if stores:
        view["stores"] = ",".join(stores)  # Glance: the ids of the stores holding a copy
    image_id = record["id"]
    view["self"] = f"/v2/images/{image_id}"
    view["file"] = f"/v2/images/{image_id}/file"
    view["schema"] = "/v2/schemas/image"
    return view


def member_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "image_id": row["image_id"],
        "member_id": row["member_id"],
        "status": row["status"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "schema": "/v2/schemas/member",
    }
