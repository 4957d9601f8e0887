"""Hostile input on the metadata and data routes: a JSON 4xx, never a 500, nothing changed.

Internal fields (``_created_us``, ``_locations``, ...) are out of reach of the API; image
ids exist in one spelling only; huge numbers and deep JSON are client errors.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import quote

import httpx
import pytest

from tests.server import ServerProcess
from tests.helpers import is_json_error

V21 = "application/openstack-images-v2.1-json-patch"
V20 = "application/openstack-images-v2.0-json-patch"
JSON = {"Content-Type": "application/json"}
HUGE = "9" * 5000  # past Python's 4300-digit int() limit


def short(value: object) -> str:
    """A test id for a parameter that may be thousands of characters long."""
    text = str(value)
    return text if len(text) < 40 else f"{text[:12]}...{len(text)}chars"


def project_client(client_for: Callable[..., httpx.Client]) -> httpx.Client:
    """A member of a new project; the project is noted in a header the server ignores."""
    project = f"proj-{uuid.uuid4().hex[:8]}"
    c = client_for(project)
    c.headers["X-Test-Project"] = project
    return c


def own_images(c: httpx.Client) -> list[dict[str, object]]:
    """The images the client's project owns (the shared server also lists others' public ones)."""
    params = {"limit": 1000, "owner": c.headers["X-Test-Project"]}
    images: list[dict[str, object]] = c.get("/v2/images", params=params).json()["images"]
    return images


def patch(c: httpx.Client, path: str, ops: object, media: str = V21) -> httpx.Response:
    return c.patch(path, content=json.dumps(ops), headers={"Content-Type": media})


@pytest.fixture(scope="module")
def active(client_for: Callable[..., httpx.Client]) -> tuple[httpx.Client, str, bytes]:
    """A project's client and an active 1000-byte image of it."""
    c = project_client(client_for)
    image_id = c.post("/v2/images", json={"name": "data", "disk_format": "raw", "container_format": "bare"}).json()["id"]
    data = bytes(range(250)) * 4
    r = c.put(f"/v2/images/{image_id}/file", content=data, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 204, r.text
    return c, image_id, data


# ---- internal fields ----------------------------------------------------------------


INTERNAL = [
    ("_created_us", "9223372036854775807"),  # as a string: pinned the image atop every listing
    ("_created_us", 1),
    ("_locations", "x"),  # a string here made every download a 500
    ("_upload_owner", "1:1"),
    ("_anything", "v"),  # a hidden property, outside the property quota
]


@pytest.mark.parametrize(("key", "value"), INTERNAL)
def test_create_refuses_internal_fields(client_for: Callable[..., httpx.Client], key: str, value: object) -> None:
    """Deviation from Glance: Glance would store a property named ``_x``; here every ``_`` name
    is reserved (403), because the records keep their internal state under such names."""
    c = project_client(client_for)
    error = is_json_error(c.post("/v2/images", json={"name": "internal", key: value}), 403)
    assert error["message"] == f"Attribute '{key}' is reserved."
    assert own_images(c) == []


@pytest.mark.parametrize("media", [V21, V20])
@pytest.mark.parametrize("op", ["add", "replace", "remove"])
@pytest.mark.parametrize("key", ["_created_us", "_locations", "_upload_owner", "_anything"])
def test_patch_refuses_internal_fields(
    active: tuple[httpx.Client, str, bytes], media: str, op: str, key: str
) -> None:
    """Deviation from Glance (see above): no patch operation reaches a ``_`` name."""
    c, image_id, data = active
    before = c.get(f"/v2/images/{image_id}").json()
    raw: dict[str, object] = {"op": op, "path": f"/{key}"} if media == V21 else {op: f"/{key}"}
    if op != "remove":
        raw["value"] = "x"
    error = is_json_error(patch(c, f"/v2/images/{image_id}", [raw], media), 403)
    assert error["message"] == f"Attribute '{key}' is reserved."
    assert c.get(f"/v2/images/{image_id}").json() == before
    assert c.get(f"/v2/images/{image_id}/file").content == data


def test_hidden_properties_do_not_slip_past_the_quota(client_for: Callable[..., httpx.Client]) -> None:
    c = project_client(client_for)
    props = {f"k{i}": "v" for i in range(128)}
    is_json_error(c.post("/v2/images", json={**props, "_h1": "v", "_h2": "v"}), 403)
    image = c.post("/v2/images", json=props)
    assert image.status_code == 201
    path = f"/v2/images/{image.json()['id']}"
    is_json_error(patch(c, path, [{"op": "add", "path": "/_h3", "value": "v"}]), 403)
    is_json_error(patch(c, path, [{"op": "add", "path": "/k128", "value": "v"}]), 413)
    assert c.get(path).json() == image.json()


@pytest.mark.parametrize("key", ["_created_us", "_locations", "_upload_owner"])
def test_list_filters_cannot_read_internal_fields(admin: httpx.Client, key: str) -> None:
    is_json_error(admin.get("/v2/images", params={key: "1"}), 400)


def test_list_filter_on_a_list_attribute_is_a_client_error(admin: httpx.Client) -> None:
    is_json_error(admin.get("/v2/images", params={"tags": "x"}), 400)


# ---- canonical image ids ------------------------------------------------------------


def canonical(h: str) -> str:
    return str(uuid.UUID(h))


# Strings ``uuid.UUID()`` accepts as the id with hex digits ``h`` that are not its canonical
# 8-4-4-4-12 form (several of them 36 characters long, as the old check wanted).
SPELLINGS: dict[str, Callable[[str], str]] = {
    "braces": lambda h: "{" + h + "}",
    "braces-hyphens": lambda h: "{" + canonical(h) + "}",
    "urn-uuid": lambda h: "urn:uuid:" + canonical(h),
    "urn-36": lambda h: "urn:" + h,
    "bare-hex": lambda h: h,
    "underscore": lambda h: h[1:8] + "_" + h[8:] + "----",  # int() takes "_" between digits
    "plus-sign": lambda h: "+" + h[1:] + "----",
    "tab": lambda h: "\t" + h[1:] + "----",
    "space": lambda h: " " + h[1:] + "----",
    "hyphens-elsewhere": lambda h: h[:4] + "-" + h[4:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:],
    "newline": lambda h: h[1:] + "\n----",
    "trailing-hyphen": lambda h: canonical(h).replace("-", "", 1) + "-",
}


def zeroed(h: str, name: str) -> str:
    """``h`` with the digits a spelling drops or replaces set to 0, so both name one id."""
    return "0" + h[1:] if name in ("underscore", "plus-sign", "tab", "space", "newline") else h


@pytest.mark.parametrize("name", SPELLINGS)
def test_create_refuses_non_canonical_ids(client_for: Callable[..., httpx.Client], name: str) -> None:
    c = project_client(client_for)
    is_json_error(c.post("/v2/images", json={"id": SPELLINGS[name](uuid.uuid4().hex)}), 400)
    assert own_images(c) == []


@pytest.mark.parametrize("name", SPELLINGS)
def test_paths_with_non_canonical_ids_are_not_found(client_for: Callable[..., httpx.Client], name: str) -> None:
    c = project_client(client_for)
    h = zeroed(uuid.uuid4().hex, name)
    assert uuid.UUID(SPELLINGS[name](h)) == uuid.UUID(h)  # the same id to uuid.UUID()
    assert c.post("/v2/images", json={"id": canonical(h), "name": "canon"}).status_code == 201
    path = "/v2/images/" + quote(SPELLINGS[name](h), safe="")
    is_json_error(c.get(path), 404)
    is_json_error(patch(c, path, [{"op": "replace", "path": "/name", "value": "renamed"}]), 404)
    is_json_error(c.get(path + "/file"), 404)
    is_json_error(c.get(path + "/members"), 404)
    is_json_error(c.put(path + "/tags/t"), 404)
    is_json_error(c.delete(path), 404)
    assert [(i["id"], i["name"], i["tags"]) for i in own_images(c)] == [(canonical(h), "canon", [])]


def test_upper_case_ids_are_stored_and_found_in_lower_case(client_for: Callable[..., httpx.Client]) -> None:
    c = project_client(client_for)
    canonical = str(uuid.uuid4())
    r = c.post("/v2/images", json={"id": canonical.upper()})
    assert r.status_code == 201 and r.json()["id"] == canonical
    assert c.get(f"/v2/images/{canonical.upper()}").json()["id"] == canonical
    is_json_error(c.post("/v2/images", json={"id": canonical}), 409)
    after = c.get("/v2/images", params={"marker": canonical.upper()})  # the marker is found
    assert after.status_code == 200 and canonical not in [i["id"] for i in after.json()["images"]]


# ---- huge numbers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "status", "content_range"),
    [
        (f"bytes={HUGE}-", 416, "bytes */1000"),  # a valid range past the end
        (f"bytes={HUGE}-{HUGE}", 416, "bytes */1000"),
        (f"bytes=5-{HUGE}", 206, "bytes 5-999/1000"),  # the last byte is clamped to the end
        (f"bytes=-{HUGE}", 206, "bytes 0-999/1000"),  # a suffix longer than the image: all of it
        (f"bytes={'0' * 5000}1-2", 206, "bytes 1-2/1000"),
        (f"bytes=5-{'0' * 5000}4", 200, None),  # last before first: ignored
        (f"bytes={HUGE}-{'9' * 4999}", 200, None),
    ],
    ids=short,
)
def test_huge_numbers_in_range(
    active: tuple[httpx.Client, str, bytes], spec: str, status: int, content_range: str | None
) -> None:
    c, image_id, data = active
    r = c.get(f"/v2/images/{image_id}/file", headers={"Range": spec})
    assert r.status_code == status, r.text[:300]
    assert r.headers.get("content-range") == content_range
    if status == 206:
        first, last = (int(x) for x in content_range.split()[1].split("/")[0].split("-"))  # type: ignore[union-attr]
        assert r.content == data[first : last + 1]
    elif status == 200:
        assert r.content == data


@pytest.mark.parametrize(
    "param", ["limit", "size_min", "size_max", "min_disk", "min_ram", "marker", "created_at", "updated_at"]
)
@pytest.mark.parametrize("value", [HUGE, "-" + HUGE, "1e999", "lt:" + HUGE], ids=short)
def test_huge_numbers_in_list_queries(admin: httpx.Client, param: str, value: str) -> None:
    error = is_json_error(admin.get("/v2/images", params={param: value}), 400)
    assert len(str(error["message"])) < 300  # the value is not echoed whole


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "gt:9999-12-31T23:59:59-12:00"])
def test_times_at_the_edge_of_the_calendar(admin: httpx.Client, value: str) -> None:
    r = admin.get("/v2/images", params={"created_at": value})
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        is_json_error(r, 400)


@pytest.mark.parametrize("key", ["min_disk", "min_ram"])
@pytest.mark.parametrize("number", [HUGE, "-" + HUGE, str(2**63), str(2**31), "1e999", "-1e999", "1.5"], ids=short)
def test_huge_numbers_in_bodies(active: tuple[httpx.Client, str, bytes], key: str, number: str) -> None:
    c, image_id, _ = active
    before = c.get(f"/v2/images/{image_id}").json()
    count = len(own_images(c))
    is_json_error(c.post("/v2/images", content=f'{{"{key}": {number}}}', headers=JSON), 400)
    body = f'[{{"op": "replace", "path": "/{key}", "value": {number}}}]'
    is_json_error(c.patch(f"/v2/images/{image_id}", content=body, headers={"Content-Type": V21}), 400)
    assert c.get(f"/v2/images/{image_id}").json() == before
    assert len(own_images(c)) == count


def raw_request(port: int, head: bytes, body: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + body)
        out = b""
        while piece := s.recv(65536):
            out += piece
    return out


@pytest.mark.parametrize("length", [HUGE, "1" + "0" * 30, "-1", "\u00b2", "1_0"], ids=short)
def test_bad_content_length_is_a_json_400(server: ServerProcess, active: tuple[httpx.Client, str, bytes], length: str) -> None:
    c, image_id, _ = active
    token = c.headers["X-Auth-Token"].encode()
    for target in (b"/v2/images", f"/v2/images/{image_id}/file".encode()):
        method = b"POST" if target == b"/v2/images" else b"PUT"
        out = raw_request(
            server.port,
            method + b" " + target + b" HTTP/1.1\r\nHost: x\r\nX-Auth-Token: " + token
            + b"\r\nContent-Type: application/json\r\nContent-Length: " + length.encode("latin-1")
            + b"\r\nConnection: close\r\n\r\n{}",
        )  # fmt: skip
        head, _, body = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), out[:300]
        assert b"content-type: application/json" in head.lower()
        assert json.loads(body)["error"]["code"] == 400
    assert c.get(f"/v2/images/{image_id}").json()["status"] == "active"


# ---- deep JSON ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A server whose JSON bodies may be 1 MiB: room for 100k levels of nesting."""
    proc = ServerProcess(tmp_path_factory.mktemp("roomy") / "data", config={"max_json_body": 1024 * 1024})
    with proc, httpx.Client(base_url=proc.url, headers={"X-Auth-Token": proc.admin_token}, timeout=30) as c:
        yield c


def nested(depth: int, kind: str) -> str:
    if kind == "array":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [40, 990, 100_000])
@pytest.mark.parametrize("kind", ["array", "object"])
def test_deep_json_is_a_400_on_every_json_route(roomy: httpx.Client, depth: int, kind: str) -> None:
    image = roomy.post("/v2/images", json={"name": "deep", "visibility": "shared"}).json()
    path = f"/v2/images/{image['id']}"
    doc = nested(depth, kind)
    is_json_error(roomy.post("/v2/images", content=doc, headers=JSON), 400)
    is_json_error(roomy.post("/v2/images", content='{"name": "deeper", "p": ' + doc + "}", headers=JSON), 400)
    is_json_error(roomy.patch(path, content=doc, headers={"Content-Type": V21}), 400)
    ops = '[{"op": "add", "path": "/p", "value": ' + doc + "}]"
    is_json_error(roomy.patch(path, content=ops, headers={"Content-Type": V21}), 400)
    is_json_error(roomy.post(path + "/members", content=doc, headers=JSON), 400)
    is_json_error(roomy.post(path + "/locations", content=doc, headers=JSON), 400)
    member = '{"member": ' + doc + "}"
    is_json_error(roomy.post(path + "/members", content=member, headers=JSON), 400)
    assert roomy.get(path).json() == image
    assert roomy.get(path + "/members").json()["members"] == []
    assert [i["name"] for i in roomy.get("/v2/images").json()["images"]].count("deeper") == 0
