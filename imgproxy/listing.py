"""``GET /v2/images``: query parsing and index-backed paging.

The default order (created_at desc, id desc) walks the registry's index streams from the
marker, k-way merging the streams a caller may see (own, public, shared-accepted, ...),
and applies the remaining filters in memory on the few records read: a page costs about
``limit`` record reads when the filters match often, whatever the number of images.
Other sort keys fall back to reading every candidate of those streams and keeping the
best page in a bounded heap (time grows with the number of visible images, memory with
the page). A filter that rarely matches reads many records too, so :func:`list_images`
is synchronous and the image service runs it on its bounded reader pool
(:class:`imgproxy.db.ReaderPool`), never on the event loop.
"""

from __future__ import annotations

import csv
import functools
import heapq
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import lmdb

from .attrs import brief, is_internal, is_uuid
from .context import RequestContext
from .errors import BadRequest
from .policy import is_visible
from .registry import MEMBER_STATUSES, Registry, stream_prefix

__all__ = ["ListQuery", "parse_query", "list_images", "DEFAULT_LIMIT", "MAX_LIMIT"]

DEFAULT_LIMIT = 25
MAX_LIMIT = 1000
SORT_KEYS = ("name", "status", "container_format", "disk_format", "size", "virtual_size", "id", "created_at", "updated_at")
_TIME_OPS = ("gt", "gte", "eq", "neq", "lt", "lte")
_IN_KEYS = ("name", "status", "container_format", "disk_format", "id")
_PAGING = ("limit", "marker", "sort_key", "sort_dir", "sort", "member_status")


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


def _parse_sort(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
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


def _matches(q: ListQuery, record: dict[str, Any]) -> bool:
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


class _Lister:
    """One listing inside one read transaction."""

    def __init__(self, registry: Registry, txn: lmdb.Transaction, ctx: RequestContext, q: ListQuery) -> None:
        self.registry, self.txn, self.ctx, self.q = registry, txn, ctx, q

    def streams(self) -> list[bytes]:
        """Index streams whose union holds every image this listing may return."""
        q, ctx = self.q, self.ctx
        vis = q.visibility
        if ctx.is_admin:
            for key, kind in (("name", "n"), ("owner", "o"), ("status", "s")):
                values = q.equals.get(key)
                if values and len(values) == 1 and isinstance(next(iter(values)), str):
                    return [stream_prefix(kind, next(iter(values)))]
            if q.tags:
                return [stream_prefix("t", q.tags[0])]
            if vis is not None and vis != "all":
                return [stream_prefix("v", vis)]
            return [stream_prefix("c")]
        streams = []
        if vis in (None, "all", "private", "shared", "community"):
            streams.append(stream_prefix("o", ctx.project_id))
        if vis in (None, "all", "public"):
            streams.append(stream_prefix("v", "public"))
        if vis in ("all", "community"):
            streams.append(stream_prefix("v", "community"))
        if vis in (None, "all", "shared"):
            streams += [stream_prefix("m", f"{ctx.project_id}\0{s}") for s in self.q.member_status]
        return streams

    def listable(self, record: dict[str, Any]) -> bool:
        """Glance's listing visibility: the visibility filter, community only when asked for
        (or owned), shared images of others only with a membership in ``member_status``."""
        vis, v = self.q.visibility, record.get("visibility")
        own = record.get("owner") == self.ctx.project_id
        if vis is not None and vis != "all" and v != vis:
            return False
        if vis is None and v == "community" and not own:
            return False
        if self.ctx.is_admin or own or v in ("public", "community"):
            return True
        if v == "shared":
            status = self.registry.member_status(self.txn, record["id"], self.ctx.project_id)
            return status in self.q.member_status
        return False

    def candidates(self, before: bytes | None) -> Iterator[dict[str, Any]]:
        """Records of the merged streams, newest first, each once, that pass every filter."""
        walks = [self.registry.walk(self.txn, prefix, before) for prefix in self.streams()]
        merged = walks[0] if len(walks) == 1 else heapq.merge(*walks, reverse=True)
        last = None
        for order, image_id in merged:
            if image_id == last:
                continue
            last = image_id
            record = self.registry.load(self.txn, image_id)
            if record is not None and self.listable(record) and _matches(self.q, record):
                yield record


def _sort_value(record: dict[str, Any], key: str) -> Any:
    return record.get("_created_us") if key == "created_at" else record.get(key)


def _compare(a: dict[str, Any], b: dict[str, Any], sort: list[tuple[str, str]]) -> int:
    for key, direction in sort:
        x, y = _sort_value(a, key), _sort_value(b, key)
        if x == y:
            continue
        # None sorts first ascending, as in Glance's SQL backends.
        if x is None or y is None:
            less = x is None
        else:
            try:
                less = x < y
            except TypeError:
                less = str(x) < str(y)
        return (-1 if less else 1) * (1 if direction == "asc" else -1)
    return 0


def list_images(registry: Registry, ctx: RequestContext, q: ListQuery) -> tuple[list[dict[str, Any]], str | None]:
    """One page of records and the marker of the next page (None when this page is short).

    400 when the marker is not an image the caller can see.
    """
    with registry.read() as txn:
        lister = _Lister(registry, txn, ctx, q)
        marker_record = None
        if q.marker is not None:
            marker_record = registry.load(txn, q.marker)
            status = None if marker_record is None else registry.member_status(txn, q.marker, ctx.project_id)
            if marker_record is None or not is_visible(ctx, marker_record, status):
                raise BadRequest(f"Invalid marker. Image {q.marker} could not be found.")
        page: list[dict[str, Any]] = []
        if q.limit == 0:
            return page, None
        if q.default_order:
            before = None
            if marker_record is not None:
                before = int(marker_record["_created_us"]).to_bytes(8, "big") + marker_record["id"].encode()
            for record in lister.candidates(before):
                page.append(record)
                if len(page) >= q.limit:
                    break
        else:
            # No index holds this order: every candidate is read, but only a page's worth is
            # kept (a bounded heap), so memory stays O(limit) whatever the number of images.
            records: Iterable[dict[str, Any]] = lister.candidates(None)
            if marker_record is not None:
                records = (r for r in records if _compare(r, marker_record, q.sort) > 0)
            def compare(a: dict[str, Any], b: dict[str, Any]) -> int:
                return _compare(a, b, q.sort)

            order = functools.cmp_to_key(compare)
            page = heapq.nsmallest(q.limit, records, key=order)
    next_marker = page[-1]["id"] if len(page) == q.limit else None
    return page, next_marker
