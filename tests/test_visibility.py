"""Glance's visibility and ownership rules, seen from both sides over HTTP.

Two projects' member tokens, a reader and the admin, on the shared tokens-mode server.
Project names are unique per test so listings are not disturbed by other tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.server import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
DATA = b"visibility test bytes\n" * 100


@dataclass
class Parties:
    a: httpx.Client  # member of project A (the owner)
    b: httpx.Client  # member of project B
    reader: httpx.Client  # reader of project A
    admin: httpx.Client
    project_a: str
    project_b: str


@pytest.fixture
def parties(client_for: Callable[..., httpx.Client], admin: httpx.Client) -> Parties:
    tag = uuid.uuid4().hex[:8]
    pa, pb = f"proj-a-{tag}", f"proj-b-{tag}"
    return Parties(client_for(pa), client_for(pb), client_for(pa, "reader"), admin, pa, pb)


def create(client: httpx.Client, *, upload: bool = True, **fields: object) -> dict:
    body = {"name": f"vis-{uuid.uuid4().hex[:8]}", "disk_format": "raw", "container_format": "bare", **fields}
    r = client.post("/v2/images", json=body)
    assert r.status_code == 201, r.text
    image = r.json()
    if upload:
        r = client.put(
            f"/v2/images/{image['id']}/file", content=DATA, headers={"Content-Type": "application/octet-stream"}
        )
        assert r.status_code == 204, r.text
    return image


def listed_ids(client: httpx.Client, **params: str) -> set[str]:
    """Every id the listing shows (following `next` links)."""
    ids: set[str] = set()
    url: str | None = "/v2/images"
    query: dict[str, str] | None = {"limit": "100", **params}
    while url:
        r = client.get(url, params=query)
        assert r.status_code == 200, r.text
        doc = r.json()
        ids |= {i["id"] for i in doc["images"]}
        url, query = doc.get("next"), None
    return ids


def assert_not_found(r: httpx.Response) -> None:
    assert r.status_code == 404, (r.status_code, r.text)
    assert r.json()["error"]["code"] == 404


def test_private_image_invisible_to_other_project(parties: Parties) -> None:
    image = create(parties.a)
    iid = image["id"]
    assert image["visibility"] in ("shared", "private")  # Glance's default is "shared"
    b = parties.b
    assert_not_found(b.get(f"/v2/images/{iid}"))
    assert_not_found(b.get(f"/v2/images/{iid}/file"))
    assert_not_found(b.patch(f"/v2/images/{iid}", json=[{"op": "replace", "path": "/name", "value": "x"}], headers=PATCH))
    assert_not_found(b.delete(f"/v2/images/{iid}"))
    assert_not_found(b.put(f"/v2/images/{iid}/tags/x"))
    assert iid not in listed_ids(b)
    # The owner, a reader of the owning project and the admin all see it; the reader may not
    # download it (Glance's download_image default needs the member role).
    assert iid in listed_ids(parties.a)
    assert parties.reader.get(f"/v2/images/{iid}").status_code == 200
    assert parties.reader.get(f"/v2/images/{iid}/file").status_code == 403
    assert parties.a.get(f"/v2/images/{iid}/file").content == DATA
    assert parties.admin.get(f"/v2/images/{iid}").status_code == 200
    # Nothing B tried changed it.
    assert parties.a.get(f"/v2/images/{iid}").json()["name"] == image["name"]


def test_explicit_private_image(parties: Parties) -> None:
    iid = create(parties.a, visibility="private", upload=False)["id"]
    assert_not_found(parties.b.get(f"/v2/images/{iid}"))
    assert iid not in listed_ids(parties.b, visibility="private")
    assert parties.admin.get(f"/v2/images/{iid}").json()["visibility"] == "private"


def test_shared_image_after_accept(parties: Parties) -> None:
    iid = create(parties.a, visibility="shared")["id"]
    a, b = parties.a, parties.b
    assert_not_found(b.get(f"/v2/images/{iid}"))
    # Only the owner adds members.
    r = b.post(f"/v2/images/{iid}/members", json={"member": parties.project_b})
    assert r.status_code in (403, 404)
    r = a.post(f"/v2/images/{iid}/members", json={"member": parties.project_b})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "pending"
    # Pending: not in B's default listing, but in member_status=pending.
    assert iid not in listed_ids(b)
    assert iid in listed_ids(b, member_status="pending")
    # The owner cannot accept on B's behalf; B can.
    r = a.put(f"/v2/images/{iid}/members/{parties.project_b}", json={"status": "accepted"})
    assert r.status_code == 403, r.text
    r = b.put(f"/v2/images/{iid}/members/{parties.project_b}", json={"status": "accepted"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "accepted"
    assert iid in listed_ids(b)
    assert iid not in listed_ids(b, member_status="pending")
    assert iid in listed_ids(b, member_status="accepted")
    assert b.get(f"/v2/images/{iid}").status_code == 200
    assert b.get(f"/v2/images/{iid}/file").content == DATA
    # A member may look but not touch.
    r = b.patch(f"/v2/images/{iid}", json=[{"op": "replace", "path": "/name", "value": "x"}], headers=PATCH)
    assert r.status_code == 403, r.text
    assert b.delete(f"/v2/images/{iid}").status_code == 403
    # Rejected: gone from the default listing, listed under member_status=rejected.
    r = b.put(f"/v2/images/{iid}/members/{parties.project_b}", json={"status": "rejected"})
    assert r.status_code == 200, r.text
    assert iid not in listed_ids(b)
    assert iid in listed_ids(b, member_status="rejected")
    assert iid in listed_ids(b, member_status="all")
    # Removing the member hides it again.
    assert a.delete(f"/v2/images/{iid}/members/{parties.project_b}").status_code == 204
    assert_not_found(b.get(f"/v2/images/{iid}"))


def test_members_only_for_shared_images(parties: Parties) -> None:
    iid = create(parties.a, visibility="private", upload=False)["id"]
    r = parties.a.post(f"/v2/images/{iid}/members", json={"member": parties.project_b})
    assert r.status_code == 403, r.text


def test_public_image_visible_to_all_only_admin_publicizes(parties: Parties) -> None:
    r = parties.a.post("/v2/images", json={"name": "pub", "visibility": "public"})
    assert r.status_code == 403, r.text
    iid = create(parties.a, upload=True)["id"]
    r = parties.a.patch(f"/v2/images/{iid}", json=[{"op": "replace", "path": "/visibility", "value": "public"}], headers=PATCH)
    assert r.status_code == 403, r.text
    r = parties.admin.patch(
        f"/v2/images/{iid}", json=[{"op": "replace", "path": "/visibility", "value": "public"}], headers=PATCH
    )
    assert r.status_code == 200, r.text
    assert r.json()["visibility"] == "public"
    for client in (parties.b, parties.reader, parties.a):
        assert client.get(f"/v2/images/{iid}").status_code == 200
        assert iid in listed_ids(client)
        assert iid in listed_ids(client, visibility="public")
    assert parties.b.get(f"/v2/images/{iid}/file").content == DATA
    r = parties.b.patch(f"/v2/images/{iid}", json=[{"op": "add", "path": "/k", "value": "v"}], headers=PATCH)
    assert r.status_code == 403, r.text
    assert parties.b.delete(f"/v2/images/{iid}").status_code == 403
    assert parties.admin.delete(f"/v2/images/{iid}").status_code == 204


def test_community_image_visible_not_listed_by_default(parties: Parties) -> None:
    iid = create(parties.a, visibility="community")["id"]
    b = parties.b
    assert b.get(f"/v2/images/{iid}").status_code == 200
    assert b.get(f"/v2/images/{iid}/file").content == DATA
    assert iid not in listed_ids(b)
    assert iid in listed_ids(b, visibility="community")
    # The owner lists its own community images by default.
    assert iid in listed_ids(parties.a)
    r = b.patch(f"/v2/images/{iid}", json=[{"op": "replace", "path": "/name", "value": "x"}], headers=PATCH)
    assert r.status_code == 403, r.text


def test_reader_cannot_create_or_change(parties: Parties) -> None:
    r = parties.reader.post("/v2/images", json={"name": "nope"})
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == 403
    iid = create(parties.a, upload=False)["id"]
    r = parties.reader.patch(f"/v2/images/{iid}", json=[{"op": "replace", "path": "/name", "value": "x"}], headers=PATCH)
    assert r.status_code == 403, r.text
    r = parties.reader.put(f"/v2/images/{iid}/file", content=b"x", headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 403, r.text
    assert parties.reader.delete(f"/v2/images/{iid}").status_code == 403
    assert parties.a.get(f"/v2/images/{iid}").json()["status"] == "queued"


def test_admin_sees_and_changes_everything(parties: Parties) -> None:
    iid = create(parties.a, visibility="private", upload=False)["id"]
    assert iid in listed_ids(parties.admin, owner=parties.project_a)
    r = parties.admin.patch(f"/v2/images/{iid}", json=[{"op": "add", "path": "/k", "value": "v"}], headers=PATCH)
    assert r.status_code == 200 and r.json()["k"] == "v"
    assert parties.admin.delete(f"/v2/images/{iid}").status_code == 204
    assert_not_found(parties.a.get(f"/v2/images/{iid}"))


@pytest.mark.parametrize("headers", [{}, {"X-Auth-Token": "not-a-token"}, {"X-Auth-Token": ""}])
def test_missing_or_unknown_token_is_401_json(server: ServerProcess, headers: dict[str, str]) -> None:
    for method, path in (("GET", "/v2/images"), ("POST", "/v2/images"), ("GET", f"/v2/images/{uuid.uuid4()}")):
        r = httpx.request(method, server.url + path, headers=headers, json={} if method == "POST" else None)
        assert r.status_code == 401, r.text
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["error"]["code"] == 401
    # Version discovery needs no token.
    assert httpx.get(server.url + "/versions").status_code == 200


def test_cli_token_works_on_running_server(server: ServerProcess) -> None:
    project = f"cli-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGPROXY_")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-m", "imgproxy", "token", "create", "--data-dir", str(server.data_dir), "--project", project],
        capture_output=True, text=True, env=env, check=True, timeout=60,
    ).stdout
    token = out.split()[-1]
    with httpx.Client(base_url=server.url, headers={"X-Auth-Token": token}, timeout=10) as client:
        deadline = time.monotonic() + 5
        r = client.post("/v2/images", json={"name": "from-cli-token"})
        while r.status_code == 401 and time.monotonic() < deadline:
            time.sleep(0.1)
            r = client.post("/v2/images", json={"name": "from-cli-token"})
        assert r.status_code == 201, r.text
        assert r.json()["owner"] == project
