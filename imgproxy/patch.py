"""JSON patch for images, as Glance's ``PATCH /v2/images/{id}`` understands it.

Two media types: ``application/openstack-images-v2.1-json-patch`` (RFC 6902 style,
``{"op": "replace", "path": "/name", "value": ...}``) and the older
``application/openstack-images-v2.0-json-patch`` (``{"replace": "/name", "value": ...}``).
Paths name one top-level attribute (``/name``, ``/tags``, ``/my_prop``); JSON pointer
escapes ``~0``/``~1`` are decoded. :func:`parse_patch` checks the document (400/403);
:func:`apply_patch` applies it to a record copy (403/409/413), inside the registry's
write transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .attrs import BASE, MAX_PROPERTIES, check_settable, check_value, count_extra
from .context import RequestContext
from .errors import BadRequest, Conflict, Forbidden, PayloadTooLarge

__all__ = ["PATCH_V21", "PATCH_V20", "PATCH_TYPES", "Change", "parse_patch", "apply_patch"]

PATCH_V21 = "application/openstack-images-v2.1-json-patch"
PATCH_V20 = "application/openstack-images-v2.0-json-patch"
PATCH_TYPES = (PATCH_V21, PATCH_V20)
_OPS = ("add", "remove", "replace")


@dataclass(frozen=True)
class Change:
    op: str
    key: str
    value: Any = None


def _decode_pointer(pointer: Any) -> str:
    if not isinstance(pointer, str) or not pointer.startswith("/"):
        raise BadRequest(f"Pointer {pointer!r} does not start with '/'.")
    parts = pointer[1:].split("/")
    if len(parts) != 1 or not parts[0].strip():
        raise BadRequest(f"Invalid path {pointer!r}: must name one attribute, e.g. '/name'.")
    token = parts[0]
    if "~" in token.replace("~0", "").replace("~1", ""):
        raise BadRequest(f"Pointer {pointer!r} contains '~' not part of a recognized escape sequence.")
    return token.replace("~1", "/").replace("~0", "~")


def _op_and_path(raw: dict[str, Any], media_type: str) -> tuple[str, Any]:
    if media_type == PATCH_V21:
        op = raw.get("op")
        if op not in _OPS:
            raise BadRequest(f"Invalid operation {op!r}: must be one of add, remove, replace.")
        if "path" not in raw:
            raise BadRequest("Unable to find 'path' in JSON Schema change.")
        return op, raw["path"]
    present = [k for k in _OPS if k in raw]
    if len(present) != 1:
        raise BadRequest('Operation objects must contain exactly one member named "add", "remove", or "replace".')
    return present[0], raw[present[0]]


def parse_patch(ctx: RequestContext, body: Any, media_type: str) -> list[Change]:
    """Check a patch document; return its changes with values validated."""
    if not isinstance(body, list):
        raise BadRequest("A JSON patch document must be a list of operations.")
    changes = []
    for raw in body:
        if not isinstance(raw, dict):
            raise BadRequest("Each patch operation must be a JSON object.")
        op, path = _op_and_path(raw, media_type)
        key = _decode_pointer(path)
        if key == "id":
            raise Forbidden("Attribute 'id' is read-only.")
        check_settable(ctx, key)
        if op == "remove":
            changes.append(Change(op, key))
            continue
        if "value" not in raw:
            raise BadRequest(f'Operation "{op}" requires a member named "value".')
        changes.append(Change(op, key, check_value(ctx, key, raw["value"])))
    return changes


# Attributes that describe the data: set while the image is queued, fixed afterwards (Glance).
_QUEUED_ONLY = frozenset({"disk_format", "container_format"})


def apply_patch(record: dict[str, Any], changes: list[Change], media_type: str) -> dict[str, Any]:
    """Apply validated changes to ``record`` (a copy the caller owns) and return it."""
    for change in changes:
        key = change.key
        present = key in BASE or key in record
        if key in _QUEUED_ONLY and record.get("status") != "queued" and record.get(key) != change.value:
            # Glance: the data's format cannot change under it once it has data.
            raise Forbidden(f"Attribute {key} can be only replaced for a queued image.")
        if change.op == "replace":
            if not present:
                raise Conflict(f"Property {key} does not exist.")
            record[key] = change.value
        elif change.op == "add":
            # v2.1 follows RFC 6902 (add replaces an existing member); v2.0 refused that.
            if present and media_type == PATCH_V20:
                raise Conflict(f"Property {key} already present.")
            record[key] = change.value
        else:
            if key in BASE:
                raise Forbidden(f"Property {key} may not be removed.")
            if key not in record:
                raise Conflict(f"Property {key} does not exist.")
            del record[key]
    if count_extra(record) > MAX_PROPERTIES:
        raise PayloadTooLarge(f"Maximum number of image properties exceeded ({MAX_PROPERTIES}).")
    return record
