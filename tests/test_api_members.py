"""Image members over HTTP: only shared images, owner adds/removes, member decides."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from tests.helpers import project


def test_member_lifecycle(client_for: Callable[..., httpx.Client]) -> None:
    owner_p, member_p, other_p = project(), project(), project()
    owner, member, other = client_for(owner_p), client_for(member_p), client_for(other_p)
    img = owner.post("/v2/images", json={"name": "s", "visibility": "shared"}).json()
    base = f"/v2/images/{img['id']}"
    assert member.get(base).status_code == 404
    r = owner.post(base + "/members", json={"member": member_p})
    assert r.status_code == 200
    row = r.json()
    assert row["image_id"] == img["id"] and row["member_id"] == member_p and row["status"] == "pending"
    assert row["schema"] == "/v2/schemas/member" and row["created_at"] and row["updated_at"]
    assert owner.post(base + "/members", json={"member": member_p}).status_code == 409
    owner.post(base + "/members", json={"member": other_p})
    # Pending members can already see the image.
    assert member.get(base).status_code == 200
    assert sorted(m["member_id"] for m in owner.get(base + "/members").json()["members"]) == sorted([member_p, other_p])
    assert [m["member_id"] for m in member.get(base + "/members").json()["members"]] == [member_p]
    assert member.get(base + f"/members/{other_p}").status_code == 404
    assert member.get(base + f"/members/{member_p}").json()["status"] == "pending"
    # Only the member itself decides.
    assert owner.put(base + f"/members/{member_p}", json={"status": "accepted"}).status_code == 403
    assert other.put(base + f"/members/{member_p}", json={"status": "accepted"}).status_code == 404
    assert member.put(base + f"/members/{member_p}", json={"status": "maybe"}).status_code == 400
    r = member.put(base + f"/members/{member_p}", json={"status": "accepted"})
    assert r.status_code == 200 and r.json()["status"] == "accepted"
    # Only the owner adds and removes.
    assert member.post(base + "/members", json={"member": project()}).status_code == 403
    assert member.delete(base + f"/members/{member_p}").status_code == 403
    assert owner.delete(base + f"/members/{member_p}").status_code == 204
    assert owner.delete(base + f"/members/{member_p}").status_code == 404
    assert member.get(base).status_code == 404
    assert owner.get(base + f"/members/{member_p}").status_code == 404


def test_only_shared_images_have_members(admin: httpx.Client, client_for: Callable[..., httpx.Client]) -> None:
    p = project()
    owner = client_for(p)
    for vis in ("private", "community"):
        img = owner.post("/v2/images", json={"visibility": vis}).json()
        base = f"/v2/images/{img['id']}"
        assert owner.post(base + "/members", json={"member": project()}).status_code == 403
        assert owner.get(base + "/members").status_code == 403
    pub = admin.post("/v2/images", json={"visibility": "public"}).json()
    assert admin.post(f"/v2/images/{pub['id']}/members", json={"member": p}).status_code == 403


def test_bad_member_bodies(client_for: Callable[..., httpx.Client]) -> None:
    owner = client_for(project())
    img = owner.post("/v2/images", json={"visibility": "shared"}).json()
    base = f"/v2/images/{img['id']}/members"
    for body in ({}, {"member": 5}, {"member": ""}, ["x"]):
        assert owner.post(base, json=body).status_code == 400
    assert owner.get(base).json()["members"] == []


def test_reader_cannot_manage_members(client_for: Callable[..., httpx.Client]) -> None:
    p = project()
    owner, reader = client_for(p), client_for(p, "reader")
    img = owner.post("/v2/images", json={"visibility": "shared"}).json()
    assert reader.post(f"/v2/images/{img['id']}/members", json={"member": project()}).status_code == 403
    assert reader.get(f"/v2/images/{img['id']}/members").status_code == 200
