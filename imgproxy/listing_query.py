"""A ``GET /v2/images`` request's query: parsing its parameters into a :class:`ListQuery`
(400 on anything invalid), and the filters checked in memory on a candidate's record
(:func:`matches`) when the index does not hold them. Paging runs in :mod:`imgproxy.listing`."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .attrs import brief, is_internal, is_uuid
from .errors import BadRequest
from .registry import MEMBER_STATUSES

__all__ = ["ListQuery", "parse_query", "matches", "DEFAULT_LIMIT", "MAX_LIMIT", "SORT_KEYS"]

DEFAULT_LIMIT = 25
MAX_LIMIT = 1000
SORT_KEYS = ("name", "status", "container_format", "disk_format", "size", "virtual_size", "id", "created_at", "updated_at")
_TIME_OPS = ("gt", "gte", "eq", "neq", "lt", "lte")
_IN_KEYS = ("name", "status", "container_format", "disk_format", "id")


@dataclass
class ListQuery:
    """A parsed list request. ``sort`` is ``[(key, "asc"|"desc"), ...]`` with tie-breakers."""

    limit: int = DEFAULT_LIMIT
    marker: str | None = None
    sort: list[tuple[str, str]] = field(default_factory=lambda: [("created_at", "desc"), ("id", "desc")])
    visibility: str | None = None
    member_status: tuple[str, ...] = ("accepted",)
    tags: list[str] = field(default_factory=list)
    # key -> set of allowed values (exact match; ``in:`` lists give several).
    equals: dict[str, set[Any]] = field(default_factory=dict)
    size_min: int | None = None
    size_max: int | None = None
    # (field, op, epoch microseconds)
    times: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def default_order(self) -> bool:
        return self.sort[:2] == [("created_at", "desc"), ("id", "desc")]

    @property
    def name_order(self) -> str | None:
        """"asc" or "desc" when sorted by name and then the default tie-breakers (the order
        name-order streams hold), else None."""
        if len(self.sort) == 3 and self.sort[0][0] == "name" and self.sort[1:] == [("created_at", "desc"), ("id", "desc")]:
            return self.sort[0][1]
        return None


def _bool(key: str, raw: str) -> bool:
    low = raw.lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise BadRequest(f"Invalid value {brief(raw)} for '{key}': expected true or false.")


# Plain decimal digits and at most 18 of them: a size in bytes fits (an exabyte has 19), and
# int() never sees the thousands of digits it refuses with ValueError (or spends time on).
_NUMBER = re.compile(r"0*([0-9]{1,18})", re.ASCII)


def _int(key: str, raw: str) -> int:
    """A non-negative decimal integer; 400 for anything else (signs, spaces, "_", huge)."""
    match = _NUMBER.fullmatch(raw)
    if match is None:
        raise BadRequest(f"Invalid value {brief(raw)} for '{key}': expected a non-negative integer of at most 18 digits.")
    return int(match.group(1))


def _marker(raw: str) -> str:
    # Image ids exist in their canonical spelling only, stored lowercase.
    if not is_uuid(raw):
        raise BadRequest(f"Invalid marker. Image {brief(raw)} could not be found.")
    return raw.lower()


def _time(key: str, raw: str) -> tuple[str, int]:
    op, sep, value = raw.partition(":")
    if not sep or op not in _TIME_OPS:
        op, value = "eq", raw
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return op, int(moment.timestamp() * 1_000_000)
    except (ValueError, OverflowError):
        raise BadRequest(f"Invalid value {brief(raw)} for '{key}': expected [op:]ISO 8601 time.") from None


def _in_list(raw: str) -> set[str]:
    # Values may be quoted to contain commas, as Glance's ``in:`` operator allows.
    return {v for row in csv.reader([raw], skipinitialspace=True) for v in row}


_SORT_PARAMS = frozenset({"sort_key", "sort_dir", "sort"})


def _parse_sort(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    if not any(k in _SORT_PARAMS for k, _ in params):
        return [("created_at", "desc"), ("id", "desc")]
    keys = [v for k, v in params if k == "sort_key"]
    dirs = [v for k, v in params if k == "sort_dir"]
    sort_specs = [v for k, v in params if k == "sort"]
    pairs: list[tuple[str, str]] = []
    if sort_specs:
        if keys or dirs:
            raise BadRequest("The 'sort' parameter cannot be combined with 'sort_key' or 'sort_dir'.")
        for spec in sort_specs:
            for item in spec.split(","):
                key, _, direction = item.strip().partition(":")
                pairs.append((key.strip(), direction.strip() or "desc"))
    else:
        keys = [k.strip() for v in keys for k in v.split(",")]
        dirs = [d.strip() for v in dirs for d in v.split(",")]
        if not keys:
            keys = ["created_at"]
        if len(dirs) > 1 and len(dirs) != len(keys):
            raise BadRequest("The number of sort_dir values must be one or match the number of sort_key values.")
        pairs = [(k, dirs[i] if len(dirs) > 1 else (dirs[0] if dirs else "desc")) for i, k in enumerate(keys)]
    for key, direction in pairs:
        if key not in SORT_KEYS:
            raise BadRequest(f"Invalid sort key {brief(key)}: must be one of {', '.join(SORT_KEYS)}.")
        if direction not in ("asc", "desc"):
            raise BadRequest(f"Invalid sort direction {brief(direction)}: must be asc or desc.")
    if len({k for k, _ in pairs}) != len(pairs):
        raise BadRequest("A sort key may appear only once.")
    # Glance's tie-breakers make every order total.
    if "created_at" not in {k for k, _ in pairs}:
        pairs.append(("created_at", "desc"))
    if "id" not in {k for k, _ in pairs}:
        pairs.append(("id", "desc"))
    return pairs


def parse_query(params: list[tuple[str, str]]) -> ListQuery:
    """Parse a list request's query parameters (repeated keys kept); 400 on anything invalid."""
    q = ListQuery(sort=_parse_sort(params))
    for key, raw in params:
        if key == "limit":
            q.limit = min(_int(key, raw), MAX_LIMIT)
        elif key == "marker":
            q.marker = _marker(raw)
        elif key in ("sort_key", "sort_dir", "sort"):
            continue
        elif key == "changes-since":
            # The v1 filter; Glance's v2 refuses it (filter on updated_at=gte:<time> instead).
            raise BadRequest("The 'changes-since' filter is no longer available on v2; use updated_at=gte:<time>.")
        elif key == "member_status":
            if raw == "all":
                q.member_status = MEMBER_STATUSES
            elif raw in MEMBER_STATUSES:
                q.member_status = (raw,)
            else:
                raise BadRequest(f"Invalid member_status {brief(raw)}: must be one of pending, accepted, rejected, all.")
        elif key == "visibility":
            if raw not in ("public", "private", "shared", "community", "all"):
                raise BadRequest(f"Invalid visibility {brief(raw)}: must be one of public, private, shared, community, all.")
            q.visibility = raw
        elif key == "tag":
            q.tags.append(raw)
        elif key in ("protected", "os_hidden"):
            q.equals[key] = {_bool(key, raw)}
        elif key in ("size_min", "size_max"):
            setattr(q, key, _int(key, raw))
        elif key in ("created_at", "updated_at"):
            op, us = _time(key, raw)
            q.times.append((key, op, us))
        elif key in ("min_disk", "min_ram"):
            q.equals[key] = {_int(key, raw)}
        elif is_internal(key):
            raise BadRequest(f"Invalid filter {brief(key)}: the attribute is reserved.")
        elif key == "tags":
            # A list attribute: its filter is ``tag`` (repeatable), as in Glance.
            raise BadRequest("Invalid filter 'tags': filter by tag with 'tag=<tag>'.")
        else:
            values = _in_list(raw[3:]) if raw.startswith("in:") and key in _IN_KEYS else {raw}
            if key == "id":
                values = {v.lower() if is_uuid(v) else v for v in values}
            q.equals[key] = q.equals[key] & values if key in q.equals else values
    return q


def _time_us(record: dict[str, Any], key: str) -> int:
    if key == "created_at":
        # Filters compare at the second resolution clients see.
        return int(record["_created_us"]) // 1_000_000 * 1_000_000
    value = record.get(key) or ""
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1_000_000)
    except ValueError:
        return 0


_OPS: dict[str, Callable[[int, int], bool]] = {
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "eq": lambda a, b: a == b,
    "neq": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}


def matches(q: ListQuery, record: dict[str, Any]) -> bool:
    """The filters other than visibility, checked in memory."""
    for key, allowed in q.equals.items():
        if key in ("protected", "os_hidden"):
            if bool(record.get(key, False)) not in allowed:
                return False
        elif record.get(key) not in allowed:
            return False
    if "os_hidden" not in q.equals and record.get("os_hidden"):
        return False
    if q.tags:
        tags = record.get("tags") or ()
        if any(t not in tags for t in q.tags):
            return False
    size = record.get("size")
    if q.size_min is not None and (size is None or size < q.size_min):
        return False
    if q.size_max is not None and (size is None or size > q.size_max):
        return False
    return all(_OPS[op](_time_us(record, key), us) for key, op, us in q.times)
