"""Who may read an image's locations (``GET /v2/images/{id}/locations``), with real Keystone tokens,
asked of imgproxy and of the real Glance 33 side by side (both validating with the same Keystone).

Glance 33's default is ``fetch_image_location: rule:service_api`` and ``service_api: role:service or
role:admin`` (glance/policies/image.py and base.py of the installed release; upstream means to drop
the admin role from ``service_api`` in a later release, not in 33)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from bench.systems.glance import GlanceSystem
from tests.keystone_fixtures import (SERVICE_PASSWORD, SERVICE_USER, KeystoneServer, imgproxy_keystone_config,
                                     keystone, new_user)  # noqa: F401 - fixtures
from tests.nginx_fixtures import NginxStore, nginx_store  # noqa: F401 - fixtures
from tests.requirements import require_glance_venv
from tests.server import ServerProcess

OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def systems(keystone: KeystoneServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:  # noqa: F811
    require_glance_venv()
    root = tmp_path_factory.mktemp("locations-policy")
    glance = GlanceSystem(root / "glance", processes=1, keystone={
        "url": keystone.url, "user": SERVICE_USER, "password": SERVICE_PASSWORD, "project": "service"})
    ours = ServerProcess(root / "imgproxy" / "data", config=imgproxy_keystone_config(keystone))
    glance.start()
    try:
        with ours:
            yield {"glance": glance.url, "imgproxy": ours.url}
    finally:
        glance.stop()


def _token(keystone: KeystoneServer, project: str, roles: list[str]) -> str:  # noqa: F811
    name, password = new_user(keystone, project, roles)
    return keystone.token(name, password, project)


def test_image_locations_are_for_the_service_and_admin_roles_as_in_glance(
        keystone: KeystoneServer, systems: dict[str, str]) -> None:  # noqa: F811
    project = f"loc-{uuid.uuid4().hex[:6]}"
    tokens = {"owner-member": _token(keystone, project, ["member"]),
              "owner-reader": _token(keystone, project, ["reader"]),
              "other-member": _token(keystone, f"loc-other-{uuid.uuid4().hex[:6]}", ["member"]),
              "admin": _token(keystone, f"loc-admin-{uuid.uuid4().hex[:6]}", ["admin"]),
              "service": _token(keystone, "service", ["service"])}
    answers: dict[str, dict[str, int]] = {}
    for system, url in systems.items():
        with httpx.Client(base_url=url, timeout=30) as c:
            owner = {"X-Auth-Token": tokens["owner-member"]}
            # Community: every caller sees it, so only the policy decides.
            r = c.post("/v2/images", json={"name": "loc", "disk_format": "raw", "container_format": "bare",
                                           "visibility": "community"}, headers=owner)
            assert r.status_code == 201, r.text
            path = f"/v2/images/{r.json()['id']}/locations"
            assert c.put(f"/v2/images/{r.json()['id']}/file", content=b"locations", headers={**owner, **OCTET}
                         ).status_code == 204
            answers[system] = {who: c.get(path, headers={"X-Auth-Token": token}).status_code
                               for who, token in tokens.items()}
            # Nova's way: the user's token and a service token (its roles are not the user's).
            answers[system]["owner-member+service-token"] = c.get(path, headers={
                **owner, "X-Service-Token": tokens["service"]}).status_code
    assert answers["imgproxy"] == answers["glance"], answers
    assert answers["glance"]["admin"] == 200 and answers["glance"]["service"] == 200
    assert answers["glance"]["owner-member"] == answers["glance"]["owner-member+service-token"] == 403


def test_a_member_adds_a_location_with_a_service_token_as_in_glance(
        keystone: KeystoneServer, systems: dict[str, str], nginx_store: NginxStore) -> None:  # noqa: F811
    """Glance's ``add_image_location``: ``service_api`` or a member of the owning project; a
    member's call also needs a service token with the service role unless an http store is
    enabled (this service keeps adding locations to trusted callers: a member alone is 403)."""
    url = nginx_store.put("located.img", b"located-bytes")
    project = f"loc-add-{uuid.uuid4().hex[:6]}"
    owner = {"X-Auth-Token": _token(keystone, project, ["member"])}
    nova = _token(keystone, "service", ["service"])
    answers: dict[str, int] = {}
    for system, base in systems.items():
        with httpx.Client(base_url=base, timeout=30) as c:
            image_id = c.post("/v2/images", json={"name": "add", "disk_format": "raw", "container_format": "bare"},
                              headers=owner).json()["id"]
            answers[system] = c.post(f"/v2/images/{image_id}/locations", json={"url": url},
                                     headers={**owner, "X-Service-Token": nova}).status_code
            if system == "imgproxy":
                other = c.post("/v2/images", json={"name": "add", "disk_format": "raw", "container_format": "bare"},
                               headers=owner).json()["id"]
                assert c.post(f"/v2/images/{other}/locations", json={"url": url}, headers=owner).status_code == 403
    assert answers == {"glance": 202, "imgproxy": 202}
