"""Images over HTTP against a real server: create, show, delete, actions, tags, who may do what."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import httpx
import pytest

PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}


def project() -> str:
    return f"proj-{uuid.uuid4().hex[:8]}"


def create(client: httpx.Client, **body: object) -> dict:
    r = client.post("/v2/images", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def test_create_defaults_and_location(client_for: Callable[..., httpx.Client]) -> None:
    p = project()
    c = client_for(p)
    r = c.post("/v2/images", json={"name": "disk", "disk_format": "qcow2", "container_format": "bare",
                                   "min_ram": 512, "os_distro": "debian", "tags": ["a", "a", "b"]})  # fmt: skip
    assert r.status_code == 201
    img = r.json()
    assert r.headers["location"].endswith(f"/v2/images/{img['id']}")
    assert img["status"] == "queued" and img["visibility"] == "shared" and img["owner"] == p
    assert img["protected"] is False and img["os_hidden"] is False and img["min_disk"] == 0
    assert img["size"] is None and img["checksum"] is None and img["os_hash_value"] is None
    assert img["tags"] == ["a", "b"] and img["os_distro"] == "debian" and img["min_ram"] == 512
    assert img["self"] == f"/v2/images/{img['id']}" and img["file"] == f"/v2/images/{img['id']}/file"
    assert img["schema"] == "/v2/schemas/image"
    assert not any(k.startswith("_") for k in img) and "locations" not in img
    assert c.get(f"/v2/images/{img['id']}").json() == img


def test_client_supplied_id_and_conflict(client_for: Callable[..., httpx.Client]) -> None:
    c = client_for(project())
    image_id = str(uuid.uuid4())
    assert create(c, id=image_id)["id"] == image_id
    r = c.post("/v2/images", json={"id": image_id})
    assert r.status_code == 409
    assert c.delete(f"/v2/images/{image_id}").status_code == 204
    # A deleted id is never reused (as Glance).
    assert c.post("/v2/images", json={"id": image_id}).status_code == 409
    assert c.post("/v2/images", json={"id": "not-a-uuid"}).status_code == 400


@pytest.mark.parametrize(
    "key,value",
    [("status", "active"), ("size", 1), ("checksum", "x"), ("os_hash_value", "x"), ("created_at", "x"),
     ("updated_at", "x"), ("file", "x"), ("self", "x"), ("schema", "x"), ("locations", []),
     ("direct_url", "x"), ("virtual_size", 1)],
)  # fmt: skip
def test_create_refuses_read_only(client_for: Callable[..., httpx.Client], key: str, value: object) -> None:
    c = client_for(project())
    r = c.post("/v2/images", json={"name": f"ro-{key}", key: value})
    assert r.status_code == 403
    assert r.json()["error"]["message"] == f"Attribute '{key}' is read-only."
    assert not [i for i in c.get("/v2/images", params={"name": f"ro-{key}"}).json()["images"]]


@pytest.mark.parametrize("key", ["deleted", "deleted_at", "location", "os_glance_importing_to_stores"])
def test_create_refuses_reserved(client_for: Callable[..., httpx.Client], key: str) -> None:
    r = client_for(project()).post("/v2/images", json={key: "x"})
    assert r.status_code == 403 and "reserved" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [{"disk_format": "floppy"}, {"container_format": "zip"}, {"min_ram": -1}, {"min_disk": "1"},
     {"protected": "yes"}, {"visibility": "everyone"}, {"name": 5}, {"name": "x" * 256}, {"tags": "a"},
     {"tags": [1]}, {"custom": 1}, {"os_hidden": None}],
)  # fmt: skip
def test_create_refuses_bad_values(client_for: Callable[..., httpx.Client], body: dict) -> None:
    r = client_for(project()).post("/v2/images", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == 400


def test_public_and_owner_only_for_admins(admin: httpx.Client, client_for: Callable[..., httpx.Client]) -> None:
    p = project()
    c = client_for(p)
    assert c.post("/v2/images", json={"visibility": "public"}).status_code == 403
    assert c.post("/v2/images", json={"owner": "someone-else"}).status_code == 403
    assert create(c, owner=p)["owner"] == p
    assert create(c, visibility="community")["visibility"] == "community"
    img = create(admin, visibility="public", owner=p)
    assert img["visibility"] == "public" and img["owner"] == p
    # The owner project now manages it.
    assert c.patch(f"/v2/images/{img['id']}", json=[{"op": "replace", "path": "/name", "value": "n"}], headers=PATCH).status_code == 200


def test_readers_cannot_write(client_for: Callable[..., httpx.Client]) -> None:
    p = project()
    member, reader = client_for(p), client_for(p, "reader")
    assert reader.post("/v2/images", json={"name": "r"}).status_code == 403
    img = create(member, visibility="private")
    assert reader.get(f"/v2/images/{img['id']}").status_code == 200
    assert reader.patch(f"/v2/images/{img['id']}", json=[], headers=PATCH).status_code == 403
    assert reader.delete(f"/v2/images/{img['id']}").status_code == 403
    assert reader.put(f"/v2/images/{img['id']}/tags/x").status_code == 403
    assert member.get(f"/v2/images/{img['id']}").json()["tags"] == []


def test_private_image_of_another_project_is_404(client_for: Callable[..., httpx.Client]) -> None:
    owner, other = client_for(project()), client_for(project())
    img = create(owner, visibility="private")
    path = f"/v2/images/{img['id']}"
    assert other.get(path).status_code == 404
    assert other.patch(path, json=[{"op": "replace", "path": "/name", "value": "x"}], headers=PATCH).status_code == 404
    assert other.delete(path).status_code == 404
    assert other.get(path + "/members").status_code == 404
    assert other.put(path + "/tags/x").status_code == 404
    assert other.post(path + "/actions/deactivate").status_code == 404
    assert owner.get(path).json()["name"] is None


def test_public_image_visible_but_not_modifiable(admin: httpx.Client, client_for: Callable[..., httpx.Client]) -> None:
    other = client_for(project())
    img = create(admin, visibility="public", name="pub")
    path = f"/v2/images/{img['id']}"
    assert other.get(path).status_code == 200
    assert other.patch(path, json=[{"op": "replace", "path": "/name", "value": "x"}], headers=PATCH).status_code == 403
    assert other.delete(path).status_code == 403
    assert admin.get(path).json()["name"] == "pub"


def test_delete_and_protected(client_for: Callable[..., httpx.Client]) -> None:
    c = client_for(project())
    img = create(c, protected=True)
    path = f"/v2/images/{img['id']}"
    assert c.delete(path).status_code == 403
    assert c.get(path).status_code == 200
    c.patch(path, json=[{"op": "replace", "path": "/protected", "value": False}], headers=PATCH)
    assert c.delete(path).status_code == 204
    assert c.get(path).status_code == 404
    assert c.delete(path).status_code == 404


def test_delete_removes_stored_data(server, client_for: Callable[..., httpx.Client]) -> None:
    c = client_for(project())
    img = create(c, disk_format="raw", container_format="bare")
    path = f"/v2/images/{img['id']}"
    r = c.put(path + "/file", content=b"x" * 1000, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 204, r.text
    files_before = [p for p in (server.data_dir / "images").rglob("*") if p.is_file() and img["id"] in str(p)]
    assert files_before
    assert c.delete(path).status_code == 204
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(p.exists() for p in files_before):
        time.sleep(0.05)
    assert not any(p.exists() for p in files_before)


def test_deactivate_reactivate(admin: httpx.Client, client_for: Callable[..., httpx.Client]) -> None:
    p = project()
    c, other = client_for(p), client_for(project())
    img = create(c, disk_format="raw", container_format="bare")
    path = f"/v2/images/{img['id']}"
    # Only active images can be deactivated: Glance answers 403 for other states.
    assert c.post(path + "/actions/deactivate").status_code == 403
    assert c.post(path + "/actions/reactivate").status_code == 403
    r = c.put(path + "/file", content=b"abc", headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 204, r.text
    assert c.post(path + "/actions/deactivate").status_code == 204
    assert c.get(path).json()["status"] == "deactivated"
    assert c.post(path + "/actions/deactivate").status_code == 204  # repeat: no-op
    assert c.post(path + "/actions/reactivate").status_code == 204
    assert c.get(path).json()["status"] == "active"
    assert c.post(path + "/actions/reactivate").status_code == 204
    pub = create(admin, visibility="public")
    assert other.post(f"/v2/images/{pub['id']}/actions/deactivate").status_code == 403


def test_tags(client_for: Callable[..., httpx.Client]) -> None:
    c = client_for(project())
    img = create(c, tags=["a"])
    path = f"/v2/images/{img['id']}"
    assert c.put(path + "/tags/b").status_code == 204
    assert c.put(path + "/tags/b").status_code == 204
    assert c.get(path).json()["tags"] == ["a", "b"]
    assert c.delete(path + "/tags/a").status_code == 204
    assert c.delete(path + "/tags/a").status_code == 404
    assert c.put(path + "/tags/" + "x" * 256).status_code == 400
    assert c.get(path).json()["tags"] == ["b"]
    assert c.get("/v2/images", params={"tag": "b"}).json()["images"][0]["id"] == img["id"]


def test_glanceclient_round_trip(server, make_token: Callable[..., str]) -> None:
    from glanceclient import Client

    p = project()
    token = make_token(p, "member")
    # Wait until the server has re-read its tokens file.
    while httpx.get(server.url + "/v2/schemas/image", headers={"X-Auth-Token": token}).status_code == 401:
        time.sleep(0.05)
    gc = Client("2", endpoint=server.url, token=token)
    img = gc.images.create(name="gc", disk_format="raw", container_format="bare", os_distro="debian")
    assert img["status"] == "queued" and img["owner"] == p
    gc.images.update(img["id"], name="gc2", extra="v", remove_props=["os_distro"])
    got = gc.images.get(img["id"])
    assert got["name"] == "gc2" and got["extra"] == "v" and "os_distro" not in got
    assert [i["id"] for i in gc.images.list(filters={"name": "gc2"})] == [img["id"]]
    gc.image_tags.update(img["id"], "t")
    assert gc.images.get(img["id"])["tags"] == ["t"]
    gc.images.delete(img["id"])
    assert not list(gc.images.list(filters={"name": "gc2"}))
