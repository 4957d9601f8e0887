"""Bad requests always get a 4xx JSON error and never change state."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest

from tests.server import ServerProcess


def is_json_error(r: httpx.Response, status: int) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()["error"]
    assert body["code"] == status and body["title"] and body["message"]


def count(client: httpx.Client, name: str) -> int:
    return len(client.get("/v2/images", params={"name": name}).json()["images"])


@pytest.mark.parametrize(
    "content",
    [b"{", b"", b"null", b"\xff\xfe", b'"just a string"', b"42", b'{"name": "\\ud800"}'],
)
def test_malformed_create_bodies(client_for: Callable[..., httpx.Client], content: bytes) -> None:
    p = f"proj-{uuid.uuid4().hex[:8]}"
    c = client_for(p)
    r = c.post("/v2/images", content=content, headers={"Content-Type": "application/json"})
    is_json_error(r, 400)
    assert c.get("/v2/images", params={"owner": p}).json()["images"] == []


def test_json_array_body_is_400(client_for: Callable[..., httpx.Client]) -> None:
    # Glance answers a JSON array with 500; it is the client's mistake, so 400 here.
    c = client_for(f"proj-{uuid.uuid4().hex[:8]}")
    is_json_error(c.post("/v2/images", json=[{"name": "arr"}]), 400)
    assert count(c, "arr") == 0


def test_body_over_max_json_body_is_413(client_for: Callable[..., httpx.Client]) -> None:
    c = client_for(f"proj-{uuid.uuid4().hex[:8]}")
    big = {"name": "big", **{f"k{i}": "v" * 1000 for i in range(100)}}
    is_json_error(c.post("/v2/images", json=big), 413)

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"name": "big2", "x": "'
        for _ in range(100):
            yield b"v" * 1024
        yield b'"}'

    is_json_error(c.post("/v2/images", content=chunks(), headers={"Content-Type": "application/json"}), 413)
    assert count(c, "big") == 0 and count(c, "big2") == 0


def test_too_many_properties_is_413(client_for: Callable[..., httpx.Client]) -> None:
    c = client_for(f"proj-{uuid.uuid4().hex[:8]}")
    is_json_error(c.post("/v2/images", json={"name": "many", **{f"k{i}": "v" for i in range(129)}}), 413)


def test_bad_ids_unknown_routes_and_methods(admin: httpx.Client) -> None:
    is_json_error(admin.get("/v2/images/not-a-uuid"), 404)
    is_json_error(admin.delete("/v2/images/not-a-uuid"), 404)
    is_json_error(admin.get(f"/v2/images/{uuid.uuid4()}"), 404)
    is_json_error(admin.get("/v2/nothing-here"), 404)
    r = admin.get("/v3/images")  # another version: the version list, as Glance (300)
    assert r.status_code == 300 and r.json()["versions"]
    is_json_error(admin.get("/v2/images/"), 404)  # no redirect to /v2/images (Glance: 404)
    is_json_error(admin.put("/v2/images"), 405)
    is_json_error(admin.post(f"/v2/images/{uuid.uuid4()}"), 405)
    is_json_error(admin.post("/versions"), 405)


def test_member_body_errors(admin: httpx.Client) -> None:
    img = admin.post("/v2/images", json={"visibility": "shared"}).json()
    base = f"/v2/images/{img['id']}/members"
    is_json_error(admin.post(base, content=b"{", headers={"Content-Type": "application/json"}), 400)
    is_json_error(admin.post(base, json={"member": "m" * 300}), 400)
    assert admin.get(base).json()["members"] == []


def test_missing_or_bad_token_is_401(server: ServerProcess) -> None:
    is_json_error(httpx.get(server.url + "/v2/images"), 401)
    is_json_error(httpx.get(server.url + "/v2/images", headers={"X-Auth-Token": "nope"}), 401)
    assert httpx.get(server.url + "/versions").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Big": "a" * 20_000},  # one line longer than Glance's max_header_line
        {f"X-H{i}": "v" * 100 for i in range(1000)},  # many ordinary lines, ~100 KiB in all
    ],
    ids=["long-line", "many-lines"],
)
def test_huge_headers_are_431_and_change_nothing(admin: httpx.Client, headers: dict[str, str]) -> None:
    before = admin.get("/v2/images", params={"limit": 1000}).json()["images"]
    r = admin.post("/v2/images", json={"name": "never-created"}, headers=headers)
    is_json_error(r, 431)
    after = admin.get("/v2/images", params={"limit": 1000}).json()["images"]
    assert [i["id"] for i in after] == [i["id"] for i in before]
