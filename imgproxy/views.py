"""Records as clients see them: internal ``_`` fields dropped, links added.

The registry stores each image's view rendered (:func:`image_json`, in the transaction that
writes the record), so show and list send stored bytes; :func:`images_page_json` assembles a
list page from them. The bytes are exactly what ``JSONResponse(image_view(record))`` sends.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = ["image_view", "member_view", "image_json", "images_page_json"]

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


def _dumps(content: Any) -> bytes:
    # As starlette's JSONResponse renders, so stored and freshly rendered bodies are equal.
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


def image_json(record: dict[str, Any]) -> bytes:
    """The response body of ``GET /v2/images/{id}`` for ``record``."""
    return _dumps(image_view(record))


def images_page_json(views: Sequence[bytes], first: str, next_link: str | None) -> bytes:
    """The body of a list page from stored image views (each an :func:`image_json`)."""
    tail = {"schema": "/v2/schemas/images", "first": first}
    if next_link is not None:
        tail["next"] = next_link
    return b"".join((b'{"images":[', b",".join(views), b"],", _dumps(tail)[1:]))  # the page copied twice, not thrice


def member_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "image_id": row["image_id"],
        "member_id": row["member_id"],
        "status": row["status"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "schema": "/v2/schemas/member",
    }
