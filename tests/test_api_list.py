"""GET /v2/images: paging, sorting, filters and who sees what, against a real server."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from urllib.parse import parse_qsl, urlsplit

import httpx
from tests.helpers import create, project


def names(client: httpx.Client, **params: object) -> list[str]:
    r = client.get("/v2/images", params=params)
    assert r.status_code == 200, r.text
    return [i["name"] for i in r.json()["images"]]


def test_default_order_paging_and_links(client_for: Callable[..., httpx.Client]) -> None:
    c = client_for(project())
    tag = uuid.uuid4().hex
    made = [create(c, name=f"n{i}", tags=[tag], visibility="private")["id"] for i in range(7)]
    seen: list[str] = []
    url = f"/v2/images?limit=3&tag={tag}"
    while url:
        body = c.get(url).json()
        assert body["first"].startswith("/v2/images?") and "marker" not in body["first"]
        seen += [i["id"] for i in body["images"]]
        url = body.get("next")
        if url:
            assert dict(parse_qsl(urlsplit(url).query))["tag"] == tag
    assert seen == made[::-1]  # newest first


def test_next_link_keeps_repeated_filters(client_for: Callable[..., httpx.Client]) -> None:
    c = client_for(project())
    t1, t2 = uuid.uuid4().hex, uuid.uuid4().hex
    for i in range(3):
        create(c, name=f"r{i}", tags=[t1, t2])
    create(c, name="only-one", tags=[t1])
    body = c.get("/v2/images", params=[("tag", t1), ("tag", t2), ("limit", "2")]).json()
    assert [i["name"] for i in body["images"]] == ["r2", "r1"]
    # Glance loses the repeated tag here; the link must keep both.
    query = parse_qsl(urlsplit(body["next"]).query)
    assert ("tag", t1) in query and ("tag", t2) in query
    assert [i["name"] for i in c.get(body["next"]).json()["images"]] == ["r0"]


def test_limits_and_bad_paging(client_for: Callable[..., httpx.Client]) -> None:
    c = client_for(project())
    create(c, name="l0")
    assert c.get("/v2/images", params={"limit": 5000}).status_code == 200  # clamps to 1000
    for params in ({"limit": -1}, {"limit": "x"}, {"marker": str(uuid.uuid4())}, {"sort_key": "bogus"},
                   {"sort_dir": "up"}, {"sort": "name:sideways"}, {"sort": "name", "sort_key": "name"},
                   {"visibility": "everyone"}, {"member_status": "maybe"}, {"protected": "perhaps"},
                   {"size_min": "big"}, {"created_at": "gt:yesterday"}):  # fmt: skip
        r = c.get("/v2/images", params=params)
        assert r.status_code == 400, (params, r.text)
    # A marker the caller cannot see is as unknown as a missing one.
    other = create(client_for(project()), visibility="private")
    assert c.get("/v2/images", params={"marker": other["id"]}).status_code == 400
    assert c.get("/v2/images", params={"limit": 0}).json()["images"] == []


def test_sorting(client_for: Callable[..., httpx.Client]) -> None:
    c = client_for(project())
    tag = uuid.uuid4().hex
    for name in ("b", "c", "a"):
        create(c, name=name, tags=[tag], min_ram=len(name))
    assert names(c, tag=tag, sort_key="name", sort_dir="asc") == ["a", "b", "c"]
    assert names(c, tag=tag, sort="name:desc") == ["c", "b", "a"]
    assert names(c, tag=tag, sort="created_at:asc") == ["b", "c", "a"]
    assert names(c, tag=tag, sort_key="name,created_at", sort_dir="asc,desc") == ["a", "b", "c"]
    # Paging with a non-default sort continues after the marker.
    first = c.get("/v2/images", params={"tag": tag, "sort": "name:asc", "limit": 2}).json()
    assert [i["name"] for i in first["images"]] == ["a", "b"]
    assert [i["name"] for i in c.get(first["next"]).json()["images"]] == ["c"]


def test_filters(admin: httpx.Client, client_for: Callable[..., httpx.Client]) -> None:
    p = project()
    c = client_for(p)
    tag = uuid.uuid4().hex
    a = create(c, name="fa", tags=[tag], disk_format="raw", container_format="bare", protected=True, arch="x86")
    b = create(c, name="fb", tags=[tag], disk_format="qcow2", container_format="bare")
    h = create(c, name="fh", tags=[tag], os_hidden=True)
    assert names(c, tag=tag, name="fa") == ["fa"]
    assert names(c, tag=tag, name="in:fa,fb") == ["fb", "fa"]
    assert names(c, tag=tag, disk_format="qcow2") == ["fb"]
    assert names(c, tag=tag, protected="true") == ["fa"]
    assert names(c, tag=tag, protected="false") == ["fb"]
    assert names(c, tag=tag, arch="x86") == ["fa"]
    assert names(c, tag=tag, owner=p) == ["fb", "fa"]
    assert names(c, tag=tag, status="queued") == ["fb", "fa"]
    assert names(c, tag=tag, status="active") == []
    assert names(c, tag=tag, os_hidden="true") == ["fh"]
    assert names(c, tag=tag, id=f"in:{a['id']},{h['id']}") == ["fa"]
    assert names(c, tag=tag, created_at=f"lte:{b['created_at']}") == ["fb", "fa"]
    assert names(c, tag=tag, created_at="gt:2100-01-01T00:00:00Z") == []
    assert names(c, tag=tag, size_min=1) == []
    assert names(admin, tag=tag, name="fb") == ["fb"]


def test_visibility_rules_in_listing(admin: httpx.Client, client_for: Callable[..., httpx.Client]) -> None:
    owner_p, member_p, stranger_p = project(), project(), project()
    owner, member, stranger = client_for(owner_p), client_for(member_p), client_for(stranger_p)
    tag = uuid.uuid4().hex
    create(owner, name="priv", tags=[tag], visibility="private")
    shared = create(owner, name="shared", tags=[tag], visibility="shared")
    create(owner, name="comm", tags=[tag], visibility="community")
    create(admin, name="pub", tags=[tag], visibility="public")
    assert names(owner, tag=tag) == ["pub", "comm", "shared", "priv"]  # own community is listed
    assert names(stranger, tag=tag) == ["pub"]
    assert names(stranger, tag=tag, visibility="community") == ["comm"]
    assert names(stranger, tag=tag, visibility="all") == ["pub", "comm"]
    assert names(stranger, tag=tag, visibility="private") == []
    assert owner.post(f"/v2/images/{shared['id']}/members", json={"member": member_p}).status_code == 200
    assert names(member, tag=tag) == ["pub"]  # pending: not listed
    assert names(member, tag=tag, member_status="pending") == ["pub", "shared"]
    assert names(member, tag=tag, visibility="shared", member_status="all") == ["shared"]
    member.put(f"/v2/images/{shared['id']}/members/{member_p}", json={"status": "accepted"})
    assert names(member, tag=tag) == ["pub", "shared"]
    assert names(member, tag=tag, visibility="shared") == ["shared"]
    member.put(f"/v2/images/{shared['id']}/members/{member_p}", json={"status": "rejected"})
    assert names(member, tag=tag) == ["pub"]
    assert names(admin, tag=tag) == ["pub", "shared", "priv"]  # others' community only on request
    assert names(admin, tag=tag, visibility="all") == ["pub", "comm", "shared", "priv"]


def test_show_and_list_answer_each_change_and_memberships_exactly(client_for: Callable[..., httpx.Client]) -> None:
    """Show and list send the stored view: every change of the record is in the next answer,
    in both, byte for byte the same entry; a membership changes who sees the image, not it."""
    owner, other = project(), project()
    a, b = client_for(owner), client_for(other)
    image = create(a, name="v1", tags=["x"], visibility="shared")
    iid = image["id"]

    def shown(client: httpx.Client) -> dict:
        r = client.get(f"/v2/images/{iid}")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
        listed = [i for i in client.get("/v2/images", params={"limit": 1000}).json()["images"] if i["id"] == iid]
        assert listed == [r.json()]
        return r.json()

    assert shown(a) == image
    patch = [{"op": "replace", "path": "/name", "value": "v2"}, {"op": "add", "path": "/os_distro", "value": "deb"}]
    r = a.patch(f"/v2/images/{iid}", json=patch, headers={"Content-Type": "application/openstack-images-v2.1-json-patch"})
    assert r.status_code == 200
    assert shown(a) == r.json() and r.json()["name"] == "v2" and r.json()["os_distro"] == "deb"
    assert a.put(f"/v2/images/{iid}/tags/y").status_code == 204
    assert a.delete(f"/v2/images/{iid}/tags/x").status_code == 204
    assert shown(a)["tags"] == ["y"]
    assert names(a, tag="y", name="v2") == ["v2"] and names(a, tag="x") == []

    assert b.get(f"/v2/images/{iid}").status_code == 404 and iid not in {i["id"] for i in b.get("/v2/images").json()["images"]}
    assert a.post(f"/v2/images/{iid}/members", json={"member": other}).status_code == 200
    before = shown(a)
    assert b.get(f"/v2/images/{iid}").json() == before  # a pending member may show it, not list it
    assert names(b, name="v2") == [] and names(b, name="v2", member_status="pending") == ["v2"]
    assert b.put(f"/v2/images/{iid}/members/{other}", json={"status": "accepted"}).status_code == 200
    assert shown(b) == before == shown(a)  # the view did not change; b now lists it
    assert names(b, name="v2", tag="y", status="queued") == ["v2"]
    r = a.patch(f"/v2/images/{iid}", json=[{"op": "replace", "path": "/visibility", "value": "private"}],
                headers={"Content-Type": "application/openstack-images-v2.1-json-patch"})
    assert r.status_code == 200 and shown(a)["visibility"] == "private"
    # Private: the membership no longer shows it to b, in show or in any listing.
    assert b.get(f"/v2/images/{iid}").status_code == 404
    assert names(b, name="v2", visibility="all", member_status="all") == []
