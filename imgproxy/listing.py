"""``GET /v2/images``: index-backed paging of a parsed query (:mod:`imgproxy.listing_query`).

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

import functools
import heapq
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import lmdb

from .context import RequestContext
from .errors import BadRequest
from .listing_plan import Part, Plan, plan_listing
from .listing_query import ListQuery, matches
from .policy import is_visible
from .index import in_list_order
from .registry import Registry
from .streams import ORDER_TS, name_end, name_key, order_of

__all__ = ["Page", "Reads", "plan_for", "on_loop", "list_images"]


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
        if record is None or (self.plan.residual and not matches(self.q, record)):
            return None
        return record

    def newest(self, before: bytes | None) -> list[bytes]:
        """A bounded plan's page: the orders of up to ``limit`` images, newest first.

        Each stream gives at most ``limit`` entries (C-level iteration), so the index reads
        stay under ``streams * limit``; an image in several streams has one order, once.
        """
        pages: list[list[bytes]] = []
        for part in self.plan.parts:
            for prefix in part.streams:
                found = self.index.newest(self.txn, prefix, before, self.q.limit)
                self.reads.index += len(found)
                if found:
                    pages.append(found)
        if len(pages) == 1:  # one stream holds them all (often so): it is the page, in order
            return pages[0]
        orders: set[bytes] = set().union(*pages)
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

