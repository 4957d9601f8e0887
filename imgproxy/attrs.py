"""Image attributes as clients may set them: which exist, which are read-only, and their types.

Mirrors Glance's image schema and its create/patch checks (``glance/api/v2/images.py``):
read-only attributes are refused with 403 "Attribute 'x' is read-only.", reserved ones with
403 "Attribute 'x' is reserved.", values of the wrong type with 400.

Two deliberate deviations: every name starting with ``_`` is reserved (records keep their
internal state, such as ``_created_us`` and ``_locations``, under such names, so no client
may write or remove them; Glance would store ``_x`` as a property), and an image id is
accepted only in its canonical 8-4-4-4-12 hex spelling (``uuid.UUID()`` also takes braces,
``urn:`` prefixes, missing or moved hyphens, signs, underscores and whitespace).
"""

from __future__ import annotations

import re
from typing import Any

from .context import RequestContext
from .errors import BadRequest, Forbidden, PayloadTooLarge

__all__ = [
    "DISK_FORMATS",
    "CONTAINER_FORMATS",
    "READ_ONLY",
    "RESERVED",
    "BASE",
    "MAX_PROPERTIES",
    "MAX_TAGS",
    "check_settable",
    "check_value",
    "check_tags",
    "is_uuid",
    "is_internal",
    "count_extra",
    "brief",
]

DISK_FORMATS = ("ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop")
CONTAINER_FORMATS = ("ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed")
VISIBILITIES = ("public", "private", "shared", "community")

READ_ONLY = frozenset(
    {
        "status", "size", "virtual_size", "checksum", "os_hash_algo", "os_hash_value", "created_at",
        "updated_at", "file", "self", "schema", "locations", "direct_url", "stores",
    }
)  # fmt: skip
RESERVED = frozenset({"location", "deleted", "deleted_at", "is_public"})
# Attributes every image has; they cannot be removed, only replaced.
BASE = frozenset(
    {"id", "name", "visibility", "protected", "os_hidden", "owner", "disk_format", "container_format",
     "min_disk", "min_ram", "tags"} | READ_ONLY
)  # fmt: skip
# Glance's default quotas (image_property_quota, image_tag_quota).
MAX_PROPERTIES = 128
MAX_TAGS = 128
_MAX_STR = 255
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII | re.IGNORECASE)


def is_uuid(value: object) -> bool:
    """True for a UUID in its canonical spelling (hex in either case); compare it lowercased."""
    return isinstance(value, str) and _CANONICAL_UUID.fullmatch(value) is not None


def is_internal(key: str) -> bool:
    """A record field the service keeps for itself: never shown, never set by a client."""
    return key.startswith("_")


def brief(value: object, limit: int = 64) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for error messages that echo input."""
    if isinstance(value, (list, dict)):
        text = f"(a JSON {'array' if isinstance(value, list) else 'object'})"
    elif isinstance(value, int) and value.bit_length() > 64:
        text = f"(an integer of {value.bit_length()} bits)"
    else:
        text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_settable(ctx: RequestContext, key: str) -> None:
    """Raise 403 if a client may never set ``key`` (read-only, reserved, ``os_glance_*``, internal)."""
    if key in READ_ONLY:
        raise Forbidden(f"Attribute '{key}' is read-only.")
    if key in RESERVED or key.startswith("os_glance") or is_internal(key):
        raise Forbidden(f"Attribute '{key if len(key) <= _MAX_STR else key[:64] + '...'}' is reserved.")
    if not key or len(key) > _MAX_STR:
        raise BadRequest(f"Invalid property name {brief(key)}: must be 1 to 255 characters.")


def _enum(key: str, value: Any, allowed: tuple[str, ...], nullable: bool) -> Any:
    if value is None and nullable:
        return None
    if not isinstance(value, str) or value not in allowed:
        raise BadRequest(f"Invalid value {brief(value)} for '{key}': must be one of {', '.join(allowed)}.")
    return value


def check_tags(value: Any) -> list[str]:
    """A valid tag list, duplicates dropped in order; 400 otherwise, 413 over the quota."""
    if not isinstance(value, list):
        raise BadRequest("Invalid value for 'tags': must be a list of strings.")
    tags: list[str] = []
    for tag in value:
        if not isinstance(tag, str) or not tag or len(tag) > _MAX_STR:
            raise BadRequest(f"Invalid tag {brief(tag)}: must be a string of 1 to 255 characters.")
        if tag not in tags:
            tags.append(tag)
    if len(tags) > MAX_TAGS:
        raise PayloadTooLarge(f"Maximum number of tags exceeded ({MAX_TAGS}).")
    return tags


def check_value(ctx: RequestContext, key: str, value: Any) -> Any:
    """Validate one settable attribute's value; return it (normalized). 400/403 otherwise.

    Only admins may make an image public or give it to another owner.
    """
    if key == "id":
        if not is_uuid(value):
            raise BadRequest(f"Invalid value {brief(value)} for 'id': must be a UUID.")
        return str(value).lower()
    if key == "name":
        if value is not None and (not isinstance(value, str) or len(value) > _MAX_STR):
            raise BadRequest("Invalid value for 'name': must be a string of at most 255 characters or null.")
        return value
    if key == "visibility":
        _enum(key, value, VISIBILITIES, nullable=False)
        if value == "public" and not ctx.is_admin:
            raise Forbidden("Only administrators may make an image public.")
        return value
    if key in ("protected", "os_hidden"):
        if not isinstance(value, bool):
            raise BadRequest(f"Invalid value {brief(value)} for '{key}': must be a boolean.")
        return value
    if key in ("min_disk", "min_ram"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > 2**31 - 1:
            raise BadRequest(f"Invalid value {brief(value)} for '{key}': must be a non-negative integer.")
        return value
    if key == "disk_format":
        return _enum(key, value, DISK_FORMATS, nullable=True)
    if key == "container_format":
        return _enum(key, value, CONTAINER_FORMATS, nullable=True)
    if key == "owner":
        if value is not None and (not isinstance(value, str) or len(value) > _MAX_STR):
            raise BadRequest("Invalid value for 'owner': must be a string of at most 255 characters.")
        if value != ctx.project_id and not ctx.is_admin:
            raise Forbidden(f"You are not permitted to set the owner of an image to '{value}'.")
        return value
    if key == "tags":
        return check_tags(value)
    # An extra property: the schema says additionalProperties are strings.
    if not isinstance(value, str):
        raise BadRequest(f"Invalid value for property '{key}': must be a string.")
    if len(value) > 65535:
        raise BadRequest(f"Invalid value for property '{key}': too long.")
    return value


def count_extra(record: dict[str, Any]) -> int:
    """The properties of ``record`` that count against MAX_PROPERTIES: every key but the base
    attributes and the service's internal fields (which clients cannot set)."""
    return sum(1 for k in record if k not in BASE and not is_internal(k))
