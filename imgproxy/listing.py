"""``GET /v2/images``: query parsing and index-backed paging.

The default order (created_at desc, id desc) walks the index streams of the listing's plan
(:mod:`imgproxy.listing_plan`) from the marker, k-way merging the streams a caller may see
(own, public, shared-accepted, ...), each already narrowed by the common filters (status,
name, owner, tags, visibility, os_hidden). A page then reads about ``limit`` index entries
and the stored views it returns (:meth:`Registry.view`), whatever the number of images, and
parses no record. Other filters (disk_format, size, times, properties) read and check the
candidates' records. A listing sorted by name (then the default tie-breakers) walks the
name-order streams the same way (:meth:`imgproxy.index.Index.by_name`). Other sort keys read
every candidate's record and keep the best page in a bounded heap (time grows with the
number of candidates, memory with the page). Such
listings may read many records, so the image service runs them on its bounded reader pool
(:class:`imgproxy.db.ReaderPool`); a bounded plan (:func:`on_loop`) runs on the event loop.
"""

from __future__ import annotations

import csv
import functools
import heapq
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, cast

import lmdb

from .attrs import brief, is_internal, is_uuid
from .context import RequestContext
from .errors import BadRequest
from .listing_plan import Part, Plan, plan_listing
from .policy import is_visible
from .index import in_list_order
from .registry import MEMBER_STATUSES, Registry
from .streams import ORDER_TS, name_end, name_key, order_of

__all__ = ["ListQuery", "Page", "Reads", "parse_query", "plan_for", "on_loop", "list_images", "DEFAULT_LIMIT",
           "MAX_LIMIT"]

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


@dataclass
class Reads:
    """What one listing read: index entries (stepped over or looked up), records parsed,
    stored views. Tests check these to prove a page costs what it returns."""

    index: int = 0
    records: int = 0
    views: int = 0


@dataclass
class Page:
    """One page: the stored view JSON of each image, the next page's marker (None when
    this page is short) and what it took to find them."""

    views: list[bytes]
    next_marker: str | None
    reads: Reads


def plan_for(ctx: RequestContext, q: ListQuery) -> Plan:
    """The index plan of ``q`` for ``ctx`` (see :mod:`imgproxy.listing_plan`)."""
    other = q.size_min is not None or q.size_max is not None or bool(q.times)
    return plan_listing(ctx, visibility=q.visibility, member_status=q.member_status, equals=q.equals,
                        tags=q.tags, other_filters=other, by_name=q.name_order is not None)


def on_loop(plan: Plan, q: ListQuery) -> bool:
    """Whether the listing costs about a page of reads, so it may run on the event loop."""
    return plan.bounded and q.default_order


class _Lister:
    """One listing inside one read transaction."""

    def __init__(self, registry: Registry, txn: lmdb.Transaction, plan: Plan, q: ListQuery) -> None:
        self.registry, self.txn, self.plan, self.q = registry, txn, plan, q
        self.index = registry.index
        self.reads = Reads()

    def _checked(self, part: Part, before: bytes | None) -> Iterator[tuple[bytes, str]]:
        walks = [self.index.walk(self.txn, prefix, before) for prefix in part.streams]
        merged = walks[0] if len(walks) == 1 else heapq.merge(*walks, reverse=True)
        for order, image_id in merged:
            self.reads.index += 1
            if all(self._in_any(check, order) for check in part.checks):
                yield order, image_id

    def _in_any(self, prefixes: tuple[bytes, ...], order: bytes) -> bool:
        for prefix in prefixes:
            self.reads.index += 1
            if self.index.has(self.txn, prefix + order):
                return True
        return False

    def _checked_by_name(self, streams: list[bytes], checks: tuple[tuple[bytes, ...], ...], descending: bool,
                         after: bytes | None) -> Iterator[bytes]:
        """The name-order suffixes of the union of ``streams`` that pass every check, in key order."""
        walks = [self.index.by_name(self.txn, prefix, descending=descending, after=after) for prefix in streams]
        merged = walks[0] if len(walks) == 1 else heapq.merge(*walks, reverse=descending)
        get = cast(Callable[[bytes], bytes | None], functools.partial(self.txn.get, db=self.index.db))
        # A page's hot loop (_in_any inlined): most checks are one term, a single lookup.
        single = [check[0] for check in checks if len(check) == 1]
        several = [check for check in checks if len(check) > 1]
        reads, last = self.reads, b""
        for suffix in merged:
            if suffix == last:  # an image in several streams comes once from each, side by side
                continue
            last = suffix
            order = suffix[name_end(suffix):]
            reads.index += 1
            for prefix in single:
                reads.index += 1
                if get(prefix + order) is None:
                    break
            else:
                if all(self._in_any(check, order) for check in several):
                    yield suffix

    def by_name(self, after: dict[str, Any] | None) -> Iterator[str]:
        """Ids of the plan's images in ``q``'s name order, each once, strictly after the
        marker's record ``after``; those ``q`` keeps, unless the plan is residual."""
        descending = self.q.name_order == "desc"
        mark = None if after is None else name_key(after.get("name")) + order_of(after)
        # Parts that differ only in their scope (the usual case) share their checks: their
        # streams merge first, so an image in two of them is checked once.
        by_checks: dict[tuple[tuple[bytes, ...], ...], list[bytes]] = {}
        for part in self.plan.parts:
            by_checks.setdefault(part.checks, []).extend(part.streams)
        walks = [self._checked_by_name(streams, checks, descending, mark) for checks, streams in by_checks.items()]
        merged = walks[0] if len(walks) == 1 else heapq.merge(*walks, reverse=descending)
        last = b""
        for suffix in in_list_order(merged, descending=descending, after=mark):
            if suffix != last:
                last = suffix
                yield suffix[name_end(suffix) + ORDER_TS:].decode()

    def candidates(self, before: bytes | None) -> Iterator[str]:
        """Ids of the plan's images, newest first, each once; those ``q`` keeps, unless the
        plan is residual (then :meth:`record` tells)."""
        walks = [self._checked(part, before) for part in self.plan.parts]
        if not walks:
            return
        merged = walks[0] if len(walks) == 1 else heapq.merge(*walks, reverse=True)
        last = None
        for _, image_id in merged:
            if image_id != last:
                last = image_id
                yield image_id

    def record(self, image_id: str) -> dict[str, Any] | None:
        """The record, if the residual filters (when the plan has any) keep it."""
        self.reads.records += 1
        record = self.registry.load(self.txn, image_id)
        if record is None or (self.plan.residual and not _matches(self.q, record)):
            return None
        return record

    def newest(self, before: bytes | None) -> list[bytes]:
        """A bounded plan's page: the orders of up to ``limit`` images, newest first.

        Each stream gives at most ``limit`` entries (C-level iteration), so the index reads
        stay under ``streams * limit``; an image in several streams has one order, once.
        """
        orders: set[bytes] = set()
        for part in self.plan.parts:
            for prefix in part.streams:
                found = self.index.newest(self.txn, prefix, before, self.q.limit)
                self.reads.index += len(found)
                orders.update(found)
        return sorted(orders, reverse=True)[:self.q.limit]

    def views(self, ids: list[bytes]) -> list[bytes]:
        self.reads.views += len(ids)
        return self.registry.views(self.txn, ids)


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


def list_images(registry: Registry, ctx: RequestContext, q: ListQuery, plan: Plan | None = None) -> Page:
    """One page of ``q`` for ``ctx`` (``plan``: :func:`plan_for`'s, when already made).

    400 when the marker is not an image the caller can see.
    """
    plan = plan or plan_for(ctx, q)
    with registry.read() as txn:
        lister = _Lister(registry, txn, plan, q)
        marker_record = None
        if q.marker is not None:
            lister.reads.records += 1
            marker_record = registry.load(txn, q.marker)
            status = None if marker_record is None else registry.member_status(txn, q.marker, ctx.project_id)
            if marker_record is None or not is_visible(ctx, marker_record, status):
                raise BadRequest(f"Invalid marker. Image {q.marker} could not be found.")
        if q.limit == 0:
            return Page([], None, lister.reads)
        ids: list[str] = []
        before = None if marker_record is None else order_of(marker_record)
        if q.default_order and plan.exact:
            keys = [order[ORDER_TS:] for order in lister.newest(before)]
            views = lister.views(keys)
            next_marker = keys[-1].decode() if len(keys) == q.limit else None
            return Page(views, next_marker, lister.reads)
        if q.default_order or q.name_order:
            ordered = lister.candidates(before) if q.default_order else lister.by_name(marker_record)
            for image_id in ordered:
                if not plan.residual or lister.record(image_id) is not None:
                    ids.append(image_id)
                    if len(ids) >= q.limit:
                        break
        else:
            # No index holds this order: every candidate's record is read, but only a page's
            # worth is kept (a bounded heap), so memory stays O(limit) whatever the number of images.
            found = (lister.record(i) for i in lister.candidates(None))
            records: Iterable[dict[str, Any]] = (r for r in found if r is not None)
            if marker_record is not None:
                records = (r for r in records if _compare(r, marker_record, q.sort) > 0)

            def compare(a: dict[str, Any], b: dict[str, Any]) -> int:
                return _compare(a, b, q.sort)

            ids = [r["id"] for r in heapq.nsmallest(q.limit, records, key=functools.cmp_to_key(compare))]
        views = lister.views([i.encode() for i in ids])
    return Page(views, ids[-1] if len(ids) == q.limit else None, lister.reads)

