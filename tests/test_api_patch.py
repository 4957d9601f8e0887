"""PATCH /v2/images/{id}: both json-patch media types and Glance's refusals."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest

V21 = "application/openstack-images-v2.1-json-patch"
V20 = "application/openstack-images-v2.0-json-patch"


def new_image(client_for: Callable[..., httpx.Client], **body: object) -> tuple[httpx.Client, str]:
    c = client_for(f"proj-{uuid.uuid4().hex[:8]}")
    r = c.post("/v2/images", json={"name": "p", "color": "red", **body})
    assert r.status_code == 201
    return c, f"/v2/images/{r.json()['id']}"


def patch(c: httpx.Client, path: str, ops: object, media: str = V21) -> httpx.Response:
    return c.patch(path, json=ops, headers={"Content-Type": media})


def test_add_replace_remove(client_for: Callable[..., httpx.Client]) -> None:
    c, path = new_image(client_for)
    r = patch(c, path, [
        {"op": "replace", "path": "/name", "value": "q"},
        {"op": "add", "path": "/shape", "value": "round"},
        {"op": "add", "path": "/color", "value": "blue"},  # v2.1: add replaces
        {"op": "replace", "path": "/tags", "value": ["x", "y"]},
        {"op": "replace", "path": "/min_disk", "value": 3},
        {"op": "add", "path": "/a~1b", "value": "slash"},
    ])  # fmt: skip
    assert r.status_code == 200, r.text
    img = r.json()
    assert (img["name"], img["shape"], img["color"], img["tags"], img["min_disk"], img["a/b"]) == (
        "q", "round", "blue", ["x", "y"], 3, "slash")  # fmt: skip
    r = patch(c, path, [{"op": "remove", "path": "/shape"}])
    assert r.status_code == 200 and "shape" not in r.json()
    assert c.get(path).json() == r.json()


def test_v20_style(client_for: Callable[..., httpx.Client]) -> None:
    c, path = new_image(client_for)
    r = patch(c, path, [{"replace": "/name", "value": "old-style"}, {"add": "/k", "value": "v"}], V20)
    assert r.status_code == 200 and r.json()["name"] == "old-style" and r.json()["k"] == "v"
    assert patch(c, path, [{"add": "/k", "value": "w"}], V20).status_code == 409
    assert patch(c, path, [{"remove": "/k"}], V20).json()
    assert "k" not in c.get(path).json()


def test_other_media_types_are_415_with_accept_patch(client_for: Callable[..., httpx.Client]) -> None:
    c, path = new_image(client_for)
    for media in ("application/json", "application/json-patch+json", ""):
        r = c.patch(path, content=b'[{"op":"replace","path":"/name","value":"z"}]', headers={"Content-Type": media})
        assert r.status_code == 415
        assert V21 in r.headers["accept-patch"] and V20 in r.headers["accept-patch"]
    assert c.get(path).json()["name"] == "p"


@pytest.mark.parametrize("key", ["status", "size", "checksum", "os_hash_algo", "created_at", "updated_at",
                                 "file", "self", "schema", "id", "locations", "direct_url", "virtual_size"])  # fmt: skip
def test_read_only_attributes(client_for: Callable[..., httpx.Client], key: str) -> None:
    c, path = new_image(client_for)
    r = patch(c, path, [{"op": "replace", "path": f"/{key}", "value": "x"}])
    assert r.status_code == 403 and r.json()["error"]["message"] == f"Attribute '{key}' is read-only."
    assert c.get(path).json()["status"] == "queued"


def test_refusals(admin: httpx.Client, client_for: Callable[..., httpx.Client]) -> None:
    c, path = new_image(client_for)
    before = c.get(path).json()
    cases = [
        ([{"op": "replace", "path": "/deleted", "value": "x"}], 403),
        ([{"op": "remove", "path": "/name"}], 403),  # core attributes cannot be removed
        ([{"op": "remove", "path": "/tags"}], 403),
        ([{"op": "replace", "path": "/nope", "value": "x"}], 409),
        ([{"op": "remove", "path": "/nope"}], 409),
        ([{"op": "replace", "path": "/visibility", "value": "public"}], 403),
        ([{"op": "replace", "path": "/owner", "value": "thief"}], 403),
        ([{"op": "replace", "path": "/disk_format", "value": "floppy"}], 400),
        ([{"op": "replace", "path": "/min_ram", "value": "big"}], 400),
        ([{"op": "add", "path": "/k", "value": 1}], 400),
        ([{"op": "move", "path": "/name", "value": "x"}], 400),
        ([{"op": "replace", "path": "name", "value": "x"}], 400),
        ([{"op": "replace", "path": "/a/b", "value": "x"}], 400),
        ([{"op": "replace", "path": "/name"}], 400),
        ({"op": "replace", "path": "/name", "value": "x"}, 400),
        # An earlier good op never applies when a later one fails.
        ([{"op": "replace", "path": "/name", "value": "changed"}, {"op": "replace", "path": "/nope", "value": "x"}], 409),
    ]
    for ops, status in cases:
        r = patch(c, path, ops)
        assert r.status_code == status, (ops, r.text)
    assert c.get(path).json() == before
    r = patch(admin, path, [{"op": "replace", "path": "/visibility", "value": "public"}])
    assert r.status_code == 200 and r.json()["visibility"] == "public"
    for vis in ("community", "private", "shared"):
        assert patch(c, path, [{"op": "replace", "path": "/visibility", "value": vis}]).json()["visibility"] == vis


def test_patch_missing_image_is_404(client_for: Callable[..., httpx.Client]) -> None:
    c, _ = new_image(client_for)
    assert patch(c, f"/v2/images/{uuid.uuid4()}", [{"op": "replace", "path": "/name", "value": "x"}]).status_code == 404
