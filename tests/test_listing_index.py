"""The listing engine over a real LMDB: stored views and index streams give exactly what a
scan of every record gives, a page reads only what it returns, and an older environment is
rebuilt. (The wire contract of GET /v2/images is in test_api_list.py, over HTTP.)"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path
from typing import Any

import lmdb
import pytest

from cache.txn import write_txn
from imgproxy.context import RequestContext
from imgproxy.db import open_env
from imgproxy.errors import ApiError
from imgproxy.listing import _compare, list_images, on_loop, plan_for
from imgproxy.listing_query import ListQuery, matches, parse_query
from imgproxy.registry import Registry, utc_now
from imgproxy.views import image_json

PROJECTS = [f"p{i}" for i in range(4)]
NAMES = ["alpha", "beta", "gamma"]
TAGS = ["red", "green", "blue"]
STATUSES = ["queued", "active", "deactivated"]
VISIBILITIES = ["public", "private", "shared", "community"]


@pytest.fixture
def env(tmp_path: Path):
    env = open_env(tmp_path, 1 << 30)
    yield env
    env.close()


def _record(rng: random.Random, n: int, base_us: int) -> dict[str, Any]:
    iso, _ = utc_now()
    return {
        "id": f"{n:08x}-0000-4000-8000-{rng.getrandbits(48):012x}", "name": rng.choice([*NAMES, None]),
        "status": rng.choice(STATUSES), "visibility": rng.choice(VISIBILITIES), "owner": rng.choice(PROJECTS),
        "protected": False, "os_hidden": rng.random() < 0.15, "disk_format": rng.choice(["raw", "qcow2"]),
        "tags": rng.sample(TAGS, rng.randrange(3)), "created_at": iso, "updated_at": iso,
        # Some share a microsecond: the order then falls back to the id, as Glance's.
        "_created_us": base_us + n // 2, "_locations": [],
    }  # fmt: skip


def _fill(registry: Registry, rng: random.Random, n: int) -> None:
    base = utc_now()[1]
    registry.create_many(_record(rng, i, base) for i in range(n))


def _churn(registry: Registry, rng: random.Random) -> None:
    """Memberships come and go and change status; records change every indexed field."""
    ids = [r["id"] for r in _all_records(registry)]
    for image_id in rng.sample(ids, len(ids) // 2):
        for member in rng.sample(PROJECTS, 2):
            try:
                registry.add_member(image_id, member, check=lambda r: None)
            except ApiError:
                pass
            registry.set_member_status(image_id, member, rng.choice(["pending", "accepted", "rejected"]))
    for image_id in rng.sample(ids, len(ids) // 3):
        def change(r: dict[str, Any]) -> dict[str, Any]:
            r.update(visibility=rng.choice(VISIBILITIES), tags=rng.sample(TAGS, rng.randrange(3)),
                     os_hidden=rng.random() < 0.15, name=rng.choice([*NAMES, None]), owner=rng.choice(PROJECTS))
            return r
        registry.update(image_id, change)
    for image_id in rng.sample(ids, len(ids) // 10):
        members = registry.list_members(image_id)
        if members:
            registry.remove_member(image_id, members[0]["member_id"], check=lambda r: None)
    for image_id in rng.sample(ids, len(ids) // 10):
        registry.delete(image_id)


def _all_records(registry: Registry) -> list[dict[str, Any]]:
    with registry.read() as txn:
        return [json.loads(bytes(v)) for _, v in txn.cursor(db=registry._images)]


def _listable(registry: Registry, ctx: RequestContext, q: ListQuery, record: dict[str, Any]) -> bool:
    """Glance's listing rules, record by record (what the engine did before it had streams)."""
    vis, v = q.visibility, record.get("visibility")
    own = record.get("owner") == ctx.project_id
    if vis is not None and vis != "all" and v != vis:
        return False
    if vis is None and v == "community" and not own:
        return False
    if ctx.is_admin or own or v in ("public", "community"):
        return True
    if v == "shared":
        with registry.read() as txn:
            return registry.member_status(txn, record["id"], ctx.project_id) in q.member_status
    return False


def _expected(registry: Registry, ctx: RequestContext, q: ListQuery) -> list[str]:
    keep = [r for r in _all_records(registry) if _listable(registry, ctx, q, r) and matches(q, r)]
    keep.sort(key=lambda r: (r["_created_us"], r["id"]), reverse=True)
    return [r["id"] for r in keep]


def _ids(views: list[bytes]) -> list[str]:
    return [json.loads(v)["id"] for v in views]


def _random_query(rng: random.Random) -> list[tuple[str, str]]:
    params = [("limit", str(rng.choice([1, 3, 7, 1000])))]
    if rng.random() < 0.5:
        params.append(("visibility", rng.choice([*VISIBILITIES, "all"])))
    if rng.random() < 0.3:
        params.append(("member_status", rng.choice(["pending", "accepted", "rejected", "all"])))
    if rng.random() < 0.3:
        params.append(("status", rng.choice([*STATUSES, "in:queued,active"])))
    if rng.random() < 0.3:
        params.append(("name", rng.choice([*NAMES, "in:alpha,gamma", "nope"])))
    if rng.random() < 0.3:
        params.append(("owner", rng.choice(PROJECTS)))
    for _ in range(rng.choice([0, 0, 1, 2])):
        params.append(("tag", rng.choice(TAGS)))
    if rng.random() < 0.2:
        params.append(("os_hidden", rng.choice(["true", "false"])))
    if rng.random() < 0.15:
        params.append(("disk_format", "raw"))  # a filter no index holds: records are read
    return params


def test_pages_equal_a_scan_of_every_record_for_every_caller_and_filter(env: lmdb.Environment) -> None:
    registry = Registry(env)
    rng = random.Random(12)
    _fill(registry, rng, 300)
    _churn(registry, rng)
    callers = [RequestContext("p0", frozenset({"admin"}))] + [RequestContext(p, frozenset({"member"})) for p in PROJECTS]
    for _ in range(400):
        ctx, params = rng.choice(callers), _random_query(rng)
        q = parse_query(params)
        expected = _expected(registry, ctx, q)
        # Every page, following the markers, as a client pages.
        got: list[str] = []
        while True:
            page = list_images(registry, ctx, q)
            got += _ids(page.views)
            if page.next_marker is None:
                break
            q.marker = page.next_marker
        assert got == expected, (ctx, params)


def test_stored_views_are_what_the_records_render_after_every_change(env: lmdb.Environment) -> None:
    registry = Registry(env)
    rng = random.Random(3)
    _fill(registry, rng, 60)
    _churn(registry, rng)
    records = _all_records(registry)
    with registry.read() as txn:
        assert registry.views(txn, [r["id"].encode() for r in records]) == [image_json(r) for r in records]
        assert txn.stat(registry._views)["entries"] == len(records)  # deleted images left nothing


def _timed_records(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    base = utc_now()[1]
    iso = utc_now()[0]
    out = []
    for i in range(n):
        out.append({
            "id": f"{i:08x}-0000-4000-8000-{rng.getrandbits(48):012x}", "name": f"img-{i % 50}",
            "status": "active" if i % 7 else "queued", "visibility": ["private", "shared", "public", "private"][i % 4],
            "owner": f"p{i % 20}", "os_hidden": i % 97 == 0, "tags": [f"t{i % 13}"], "created_at": iso,
            "updated_at": iso, "_created_us": base + i, "_locations": [],
        })  # fmt: skip
    return out


BOUNDED = [
    [], [("status", "active")], [("status", "queued")], [("name", "img-7")], [("tag", "t3")], [("owner", "p3")],
    [("owner", "p5")], [("visibility", "private")], [("visibility", "shared")], [("visibility", "public")],
    [("visibility", "all")], [("os_hidden", "true")], [("member_status", "all")], [("name", "in:img-1,img-2")],
    [("visibility", "public"), ("status", "queued")], [("visibility", "private"), ("tag", "t1")],
]
COMBINED = [[("status", "queued"), ("tag", "t2")], [("name", "img-3"), ("tag", "t3"), ("status", "active")],
            [("owner", "p2"), ("visibility", "shared"), ("tag", "t2")]]


def test_a_page_reads_what_it_returns_among_10k_images(env: lmdb.Environment) -> None:
    registry = Registry(env)
    registry.create_many(_timed_records(10_000, 5))
    # A few memberships: p3 sees some shared images of others.
    for image_id in [r["id"] for r in _timed_records(10_000, 5)[1::200]]:
        registry.add_member(image_id, "p3", check=lambda r: None)
        registry.set_member_status(image_id, "p3", "accepted")
    callers = [RequestContext("p3", frozenset({"member"})), RequestContext("p3", frozenset({"admin"}))]
    for ctx in callers:
        for filters in BOUNDED:
            for limit in (1, 25, 100):
                q = parse_query([("limit", str(limit)), *filters])
                plan = plan_for(ctx, q)
                assert on_loop(plan, q), (ctx, filters)
                page = list_images(registry, ctx, q, plan)
                streams = sum(len(p.streams) for p in plan.parts)
                assert page.reads.records == 0, (ctx, filters)
                assert page.reads.views == len(page.views) <= limit, (ctx, filters)
                assert page.reads.index <= streams * limit, (ctx, filters, page.reads)
                if page.views and page.next_marker:  # the next page costs the same (one marker read)
                    q.marker = page.next_marker
                    after = list_images(registry, ctx, q, plan)
                    assert after.reads.records == 1 and after.reads.views == len(after.views)
        for filters in COMBINED:
            # Two or more filters of the index: one stream drives, the others are point
            # lookups; still no record is read and only returned views.
            q = parse_query([("limit", "10"), *filters])
            page = list_images(registry, ctx, q)
            assert page.reads.records == 0 and page.reads.views == len(page.views), (ctx, filters)


def test_an_environment_of_an_older_layout_is_rebuilt(env: lmdb.Environment) -> None:
    registry = Registry(env)
    rng = random.Random(9)
    _fill(registry, rng, 50)
    _churn(registry, rng)
    ctx = RequestContext("p1", frozenset({"member"}))
    q = parse_query([("limit", "1000"), ("visibility", "all"), ("member_status", "all")])
    before = _ids(list_images(registry, ctx, q).views)
    assert before and registry.upgrade() == 50 - 5  # never stamped: rebuilt once
    assert registry.upgrade() == 0
    # What an older version leaves: records and members, an index of another layout, no views.
    meta = env.open_db(b"registry_meta")
    with write_txn(env) as txn:
        txn.drop(registry._idx, delete=False)
        txn.drop(registry._views, delete=False)
        txn.put(b"c\x00\x00old-layout-key", b"", db=registry._idx)
        txn.drop(meta, delete=False)
    assert list_images(registry, ctx, q).views == []
    assert registry.upgrade(batch=7) == 45  # several transactions, resuming from a mark
    assert _ids(list_images(registry, ctx, q).views) == before
    with registry.read() as txn:
        assert txn.get(b"c\x00\x00old-layout-key", db=registry._idx) is None


# Names that sort apart only by code point, by a NUL, by length, or not at all (null first).
ODD_NAMES = ["a", "a\0", "a\0b", "ab", "", "é", "\U0001f600", "\uffff", "alpha", None]


def _sorted_scan(registry: Registry, ctx: RequestContext, q: ListQuery) -> list[str]:
    keep = [r for r in _all_records(registry) if _listable(registry, ctx, q, r) and matches(q, r)]
    keep.sort(key=functools.cmp_to_key(lambda a, b: _compare(a, b, q.sort)))
    return [r["id"] for r in keep]


def test_pages_sorted_by_name_equal_a_sorted_scan_for_every_caller_and_filter(env: lmdb.Environment) -> None:
    registry = Registry(env)
    rng = random.Random(21)
    _fill(registry, rng, 300)
    _churn(registry, rng)
    for image_id in rng.sample([r["id"] for r in _all_records(registry)], 120):
        registry.update(image_id, lambda r: dict(r, name=rng.choice(ODD_NAMES)))
    callers = [RequestContext("p0", frozenset({"admin"}))] + [RequestContext(p, frozenset({"member"})) for p in PROJECTS]
    for _ in range(300):
        ctx = rng.choice(callers)
        params = [*_random_query(rng), ("sort_key", "name"), ("sort_dir", rng.choice(["asc", "desc"]))]
        q = parse_query(params)
        assert q.name_order is not None
        expected = _sorted_scan(registry, ctx, q)
        got: list[str] = []
        while True:
            page = list_images(registry, ctx, q)
            got += _ids(page.views)
            assert page.reads.records <= (q.marker is not None) + (len(page.views) + 1) * plan_for(ctx, q).residual
            if page.next_marker is None:
                break
            q.marker = page.next_marker
        assert got == expected, (ctx, params)


FILTERED_BY_NAME = [("limit", "100"), ("disk_format", "raw"), ("container_format", "bare"), ("status", "queued"),
                    ("sort_key", "name"), ("sort_dir", "asc")]


def test_a_page_sorted_by_name_and_filtered_reads_no_record_among_3k_images(env: lmdb.Environment) -> None:
    # The benchmark's filtered listing: every image matches, so a page steps over about a
    # page of index entries (and one lookup per filter each), reads the views it returns
    # and not one record; it used to read and sort every record.
    records = _timed_records(3_000, 8)
    for i, r in enumerate(records):
        r.update(name=f"n-{(i * 7919) % 3_000:05d}", status="queued", disk_format="raw", container_format="bare")
    registry = Registry(env)
    registry.create_many(records)
    for image_id in [r["id"] for r in records[1::100]]:
        registry.add_member(image_id, "p3", check=lambda r: None)
        registry.set_member_status(image_id, "p3", "accepted")
    for ctx in (RequestContext("p3", frozenset({"admin"})), RequestContext("p3", frozenset({"member"}))):
        q = parse_query(FILTERED_BY_NAME)
        plan = plan_for(ctx, q)
        seen: list[str] = []
        for _ in range(3):
            page = list_images(registry, ctx, q, plan)
            streams = sum(len(p.streams) for p in plan.parts)
            checks = max(len(p.checks) for p in plan.parts)
            assert len(page.views) == 100
            assert page.reads.records == (q.marker is not None), (ctx, page.reads)
            assert page.reads.views == 100
            # An image comes from each of its caller's streams (at most two: own and public).
            assert page.reads.index <= 2 * (100 + streams) * (1 + checks), (ctx, page.reads)
            seen += _ids(page.views)
            q.marker = page.next_marker
        assert seen == _sorted_scan(registry, ctx, parse_query(FILTERED_BY_NAME))[:300], ctx
