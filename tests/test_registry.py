"""The registry on its own: records, indexes, upload lifecycle, members (a real LMDB env)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgproxy.context import RequestContext
from imgproxy.db import open_env
from imgproxy.errors import Conflict, Forbidden, NotFound
from imgproxy.registry import Registry, stream_prefix, utc_now

OWNER = RequestContext("p1", frozenset({"member"}))
OTHER = RequestContext("p2", frozenset({"member"}))
ADMIN = RequestContext("adm", frozenset({"admin"}))


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    env = open_env(tmp_path, 64 * 1024 * 1024)
    yield Registry(env)
    env.close()


def record(n: int, **kw: object) -> dict:
    iso, us = utc_now()
    base = {
        "id": f"{n:08x}-0000-4000-8000-000000000000", "name": f"img{n}", "status": "queued",
        "visibility": "private", "owner": "p1", "tags": [], "protected": False, "created_at": iso,
        "updated_at": iso, "_created_us": us + n, "_locations": [],
    }  # fmt: skip
    base.update(kw)
    return base


def ids(registry: Registry, prefix: bytes, before: bytes | None = None) -> list[str]:
    with registry.read() as txn:
        return [i for _, i in registry.walk(txn, prefix, before)]


def test_streams_walk_newest_first_and_follow_updates(registry: Registry) -> None:
    registry.create_many([record(i, owner="p1" if i % 2 else "p2", tags=["a"] if i < 3 else []) for i in range(6)])
    assert ids(registry, stream_prefix("c")) == [record(i)["id"] for i in (5, 4, 3, 2, 1, 0)]
    assert ids(registry, stream_prefix("o", "p1")) == [record(i)["id"] for i in (5, 3, 1)]
    assert ids(registry, stream_prefix("t", "a")) == [record(i)["id"] for i in (2, 1, 0)]
    registry.update(record(5)["id"], lambda r: dict(r, owner="p2", tags=["a"]))
    assert ids(registry, stream_prefix("o", "p1")) == [record(i)["id"] for i in (3, 1)]
    assert record(5)["id"] in ids(registry, stream_prefix("t", "a"))
    with registry.read() as txn:
        marker = next(o for o, i in registry.walk(txn, stream_prefix("c")) if i == record(3)["id"])
    assert ids(registry, stream_prefix("c"), marker) == [record(i)["id"] for i in (2, 1, 0)]
    assert ids(registry, stream_prefix("o", "nobody")) == []


def test_create_refuses_existing_and_deleted_ids(registry: Registry) -> None:
    registry.create(record(1))
    with pytest.raises(Conflict):
        registry.create(record(1))
    registry.delete(record(1)["id"])
    assert registry.get(record(1)["id"]) is None
    assert ids(registry, stream_prefix("c")) == []
    with pytest.raises(Conflict):
        registry.create(record(1))


def test_visibility_is_404_never_403(registry: Registry) -> None:
    registry.create(record(1))
    assert registry.get_visible(OWNER, record(1)["id"])["name"] == "img1"
    assert registry.get_visible(ADMIN, record(1)["id"])
    with pytest.raises(NotFound):
        registry.get_visible(OTHER, record(1)["id"])
    with pytest.raises(NotFound):
        registry.get_visible(OWNER, record(9)["id"])


def test_upload_lifecycle(registry: Registry) -> None:
    image_id = registry.create(record(1))["id"]
    with pytest.raises(NotFound):
        registry.begin_upload(OTHER, image_id)
    reader = RequestContext("p1", frozenset({"reader"}))
    with pytest.raises(Forbidden):
        registry.begin_upload(reader, image_id)
    assert registry.begin_upload(OWNER, image_id)["status"] == "saving"
    with pytest.raises(Conflict):
        registry.begin_upload(OWNER, image_id)
    registry.fail_upload(image_id)
    assert registry.get(image_id)["status"] == "queued"
    registry.begin_upload(OWNER, image_id)
    seen = []
    done = registry.finish_upload(
        image_id, size=3, checksum="c", os_hash_algo="sha512", os_hash_value="h", location="file:///x",
        also=lambda txn: seen.append(txn),
    )
    assert done is not None and done["status"] == "active" and done["size"] == 3 and seen
    assert registry.locations(image_id) == [{"url": "file:///x", "metadata": {}}]
    assert ids(registry, stream_prefix("s", "active")) == [image_id]
    assert ids(registry, stream_prefix("s", "saving")) == []
    # Not saving any more: finish is refused and ``also`` never runs.
    assert registry.finish_upload(image_id, size=1, checksum="", os_hash_algo="", os_hash_value="", location="",
                                  also=lambda txn: seen.append("again")) is None  # fmt: skip
    assert seen == [seen[0]]
    registry.fail_upload(image_id)  # no-op when active
    assert registry.get(image_id)["status"] == "active"


def test_finish_after_delete_returns_none(registry: Registry) -> None:
    image_id = registry.create(record(1))["id"]
    registry.begin_upload(OWNER, image_id)
    registry.delete(image_id)
    assert registry.finish_upload(image_id, size=1, checksum="", os_hash_algo="", os_hash_value="", location="") is None


def test_status_transitions_follow_glance(registry: Registry) -> None:
    image_id = registry.create(record(1))["id"]
    with pytest.raises(Conflict):
        registry.set_status(image_id, "deactivated")
    registry.set_status(image_id, "active")
    registry.set_status(image_id, "deactivated")
    registry.set_status(image_id, "active")
    with pytest.raises(Conflict):
        registry.set_status(image_id, "queued")
    assert registry.get(image_id)["status"] == "active"


def test_protected_images_cannot_be_deleted(registry: Registry) -> None:
    image_id = registry.create(record(1, protected=True))["id"]
    with pytest.raises(Forbidden):
        registry.delete(image_id)
    assert registry.get(image_id) is not None


def test_members_index_follows_status(registry: Registry) -> None:
    image_id = registry.create(record(1, visibility="shared"))["id"]
    registry.add_member(image_id, "p2", check=lambda r: None)
    with pytest.raises(Conflict):
        registry.add_member(image_id, "p2", check=lambda r: None)
    assert ids(registry, stream_prefix("m", "p2\0pending")) == [image_id]
    registry.set_member_status(image_id, "p2", "accepted")
    assert ids(registry, stream_prefix("m", "p2\0pending")) == []
    assert ids(registry, stream_prefix("m", "p2\0accepted")) == [image_id]
    assert registry.get_visible(OTHER, image_id)
    registry.remove_member(image_id, "p2", check=lambda r: None)
    assert ids(registry, stream_prefix("m", "p2\0accepted")) == []
    with pytest.raises(NotFound):
        registry.get_visible(OTHER, image_id)
