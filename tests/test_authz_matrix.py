"""Authorization, generated: every caller x visibility x membership x verb, against Glance's defaults.

The oracle below is written from Glance's default policy (``glance/policies/image.py`` and
``base.py``, the secure-RBAC defaults) and its visibility rule (``is_image_visible`` in its
DB layer), not from imgproxy's code, so the two are compared rather than one restated:

- an image a caller cannot see is 404 for every verb (visibility comes first);
- seeing: admins all; public and community images everyone; the owner project; a shared
  image, projects that are members of it in any status;
- changing (PATCH, DELETE, deactivate, tags, upload, members): ``role:admin or (role:member
  and project_id:%(project_id)s)``: 403 for a caller who sees the image but may not change it;
- downloading: ``role:admin or role:member and (...)``: a reader may show but not download;
- members exist only on shared images (403 on others, for callers who may change the image);
- the cache API: ``role:admin``.

Callers carry roles as Keystone's implied roles expand them (member implies reader).
A leak is a 2xx where Glance answers 4xx; the test reports every mismatch and fails on any.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.server import ServerProcess

OCTET = {"Content-Type": "application/octet-stream"}
VISIBILITIES = ("private", "shared", "public", "community")
MEMBER_STATES = (None, "pending", "accepted", "rejected")


@dataclass(frozen=True)
class Caller:
    name: str
    project: str
    roles: frozenset[str]

    @property
    def admin(self) -> bool:
        return "admin" in self.roles


@dataclass(frozen=True)
class Case:
    visibility: str
    member_state: str | None  # the membership of project B (only on shared images)


def _sees(c: Caller, case: Case, owner: str, other: str) -> bool:
    if c.admin or case.visibility in ("public", "community") or c.project == owner:
        return True
    return case.visibility == "shared" and c.project == other and case.member_state is not None


def _may_change(c: Caller, owner: str) -> bool:
    return c.admin or ("member" in c.roles and c.project == owner)


def expected(verb: str, c: Caller, case: Case, owner: str, other: str) -> int:
    """Glance's answer for ``verb`` by ``c`` on an image of ``owner`` in ``case``."""
    if verb == "cache_queue":
        return 202 if c.admin else 403
    if not _sees(c, case, owner, other):
        return 404
    if verb == "show":
        return 200
    if verb == "download":
        return 200 if c.admin or "member" in c.roles else 403
    if not _may_change(c, owner):
        return 403
    if verb == "add_member":
        return 200 if case.visibility == "shared" else 403
    return {"patch": 200, "delete": 204, "deactivate": 204, "add_tag": 204, "upload": 204}[verb]


VERBS = ("show", "download", "patch", "delete", "deactivate", "add_tag", "upload", "add_member", "cache_queue")
DESTRUCTIVE = {"patch", "delete", "deactivate", "add_tag", "upload", "add_member"}


@pytest.fixture(scope="module")
def world(server: ServerProcess, client_for: Callable[..., httpx.Client]) -> Iterator[dict[str, object]]:
    tag = uuid.uuid4().hex[:6]
    owner, other, third = f"authz-a-{tag}", f"authz-b-{tag}", f"authz-c-{tag}"
    callers = [
        Caller("owner-reader", owner, frozenset({"reader"})),
        Caller("owner-member", owner, frozenset({"reader", "member"})),
        Caller("other-reader", other, frozenset({"reader"})),
        Caller("other-member", other, frozenset({"reader", "member"})),
        Caller("third-member", third, frozenset({"reader", "member"})),
        Caller("admin", f"authz-admin-{tag}", frozenset({"reader", "member", "admin"})),
    ]
    role_of = {"reader": "reader", "member": "member", "admin": "admin"}
    clients = {}
    for c in callers:
        top = "admin" if c.admin else ("member" if "member" in c.roles else "reader")
        clients[c.name] = client_for(c.project, role_of[top])
    yield {"owner": owner, "other": other, "third": third, "callers": callers, "clients": clients}


def _make_image(world: dict[str, object], case: Case, *, data: bool) -> str:
    clients = world["clients"]  # type: ignore[assignment]
    admin: httpx.Client = clients["admin"]  # type: ignore[index]
    r = admin.post("/v2/images", json={"name": "authz", "disk_format": "raw", "container_format": "bare",
                                        "owner": world["owner"], "visibility": case.visibility})
    assert r.status_code == 201, r.text
    image_id = str(r.json()["id"])
    if data:
        assert admin.put(f"/v2/images/{image_id}/file", content=b"authz-bytes", headers=OCTET).status_code == 204
    if case.member_state is not None:
        r = admin.post(f"/v2/images/{image_id}/members", json={"member": world["other"]})
        assert r.status_code == 200, r.text
        if case.member_state != "pending":
            member: httpx.Client = clients["other-member"]  # type: ignore[index]
            r = member.put(f"/v2/images/{image_id}/members/{world['other']}", json={"status": case.member_state})
            assert r.status_code == 200, r.text
    return image_id


def _call(http: httpx.Client, verb: str, image_id: str, third: str) -> int:
    if verb == "show":
        return http.get(f"/v2/images/{image_id}").status_code
    if verb == "download":
        return http.get(f"/v2/images/{image_id}/file").status_code
    if verb == "patch":
        return http.patch(f"/v2/images/{image_id}", content=b'[{"op": "replace", "path": "/name", "value": "x"}]',
                          headers={"Content-Type": "application/openstack-images-v2.1-json-patch"}).status_code
    if verb == "delete":
        return http.delete(f"/v2/images/{image_id}").status_code
    if verb == "deactivate":
        return http.post(f"/v2/images/{image_id}/actions/deactivate").status_code
    if verb == "add_tag":
        return http.put(f"/v2/images/{image_id}/tags/t1").status_code
    if verb == "upload":
        return http.put(f"/v2/images/{image_id}/file", content=b"new-bytes", headers=OCTET).status_code
    if verb == "add_member":
        return http.post(f"/v2/images/{image_id}/members", json={"member": third}).status_code
    if verb == "cache_queue":
        return http.put(f"/v2/cache/{image_id}").status_code
    raise AssertionError(verb)


CASES = [Case(v, None) for v in VISIBILITIES] + [Case("shared", s) for s in MEMBER_STATES if s is not None]


def test_every_caller_verb_and_image_state_answers_as_glance(world: dict[str, object]) -> None:
    assert_answers_as_glance(world)


def assert_answers_as_glance(world: dict[str, object]) -> None:
    """Run every caller x verb x case of ``world`` (as the fixture above builds it, with
    tokens of any kind) and fail listing each answer that differs from Glance's."""
    callers: list[Caller] = world["callers"]  # type: ignore[assignment]
    clients: dict[str, httpx.Client] = world["clients"]  # type: ignore[assignment]
    owner, other, third = str(world["owner"]), str(world["other"]), str(world["third"])
    mismatches: list[str] = []
    leaks = checked = 0
    for case in CASES:
        shared_image = _make_image(world, case, data=True)  # for the verbs that change nothing
        for c, verb in itertools.product(callers, VERBS):
            if verb in DESTRUCTIVE:
                image_id = _make_image(world, case, data=verb != "upload")
            else:
                image_id = shared_image
            want = expected(verb, c, case, owner, other)
            got = _call(clients[c.name], verb, image_id, third)
            checked += 1
            if got != want:
                leak = got < 400 <= want
                leaks += leak
                mismatches.append(f"{'LEAK ' if leak else ''}{c.name} {verb} on {case.visibility}"
                                  f"{'/' + str(case.member_state) if case.member_state else ''}: {got}, Glance {want}")
    assert checked == len(CASES) * len(callers) * len(VERBS)
    assert not mismatches, f"{leaks} leaks, {len(mismatches)} mismatches of {checked}:\n" + "\n".join(mismatches)
