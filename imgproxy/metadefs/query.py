"""List parameters (``limit``, ``marker``, ``sort_key``, ``sort_dir``, filters) and ordering.

Glance answers 500 for ``limit=abc`` and for an unknown ``sort_key``; here every bad value
is a 400 that names the parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import BadRequest

__all__ = ["ListQuery", "parse_query", "page", "NAMESPACE_SORT_KEYS", "ITEM_SORT_KEYS"]

DEFAULT_LIMIT = 25  # Glance's limit_param_default
MAX_LIMIT = 1000  # Glance's api_limit_max

NAMESPACE_SORT_KEYS = ("created_at", "updated_at", "namespace", "display_name", "description", "visibility", "protected", "owner")
ITEM_SORT_KEYS = ("created_at", "updated_at", "name")


@dataclass(frozen=True)
class ListQuery:
    limit: int | None
    marker: str | None
    sort_key: str
    sort_dir: str
    visibility: str | None = None
    resource_types: tuple[str, ...] = ()


def _limit(raw: str | None, default: int | None) -> int | None:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"limit param must be an integer, not {raw!r}") from None
    if value < 0:
        raise BadRequest("limit param must be positive")
    return min(value, MAX_LIMIT)


def parse_query(
    params: Mapping[str, str], *, sort_keys: tuple[str, ...], default_limit: int | None, filters: bool
) -> ListQuery:
    """Read the list parameters; other parameters are ignored, as Glance ignores them."""
    sort_dir = params.get("sort_dir", "desc")
    if sort_dir not in ("asc", "desc"):
        raise BadRequest(f"Invalid sort direction: {sort_dir}")
    sort_key = params.get("sort_key", "created_at")
    if sort_key not in sort_keys:
        raise BadRequest(f"Invalid sort key: {sort_key} (one of {', '.join(sort_keys)})")
    visibility = params.get("visibility") or None if filters else None
    if visibility is not None and visibility not in ("public", "private"):
        raise BadRequest(f"Invalid visibility value: {visibility}")
    raw_types = params.get("resource_types", "") if filters else ""
    return ListQuery(
        limit=_limit(params.get("limit"), default_limit),
        marker=params.get("marker") or None,
        sort_key=sort_key,
        sort_dir=sort_dir,
        visibility=visibility,
        resource_types=tuple(t for t in raw_types.split(",") if t),
    )


def _sort_key(record: Mapping[str, Any], key: str) -> tuple[Any, ...]:
    """``key``'s value (None first, as SQL sorts NULL), then creation order as the tie-break."""
    seq = int(record.get("_seq", 0))
    if key == "created_at":
        return (seq,)
    value = record.get(key)
    return ((0, "") if value is None else (1, value), seq)


def page(
    records: list[dict[str, Any]],
    query: ListQuery,
    name_of: Callable[[Mapping[str, Any]], str],
    marker: Mapping[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Sort ``records``, keep those after ``marker`` (the record ``query.marker`` names, found by
    the caller, which may be filtered out of ``records``) and cut at the limit. Returns the page
    and the marker of the next one (set when the page is full)."""
    reverse = query.sort_dir == "desc"
    ordered = sorted(records, key=lambda r: _sort_key(r, query.sort_key), reverse=reverse)
    if marker is not None:
        after = _sort_key(marker, query.sort_key)
        ordered = [r for r in ordered if (_sort_key(r, query.sort_key) < after if reverse else _sort_key(r, query.sort_key) > after)]
    if query.limit is None:
        return ordered, None
    cut = ordered[: query.limit]
    full = bool(cut) and len(cut) == query.limit
    return cut, (name_of(cut[-1]) if full else None)
