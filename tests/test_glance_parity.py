"""Answers that differ from nothing in the spec but were measured against the real Glance 33 (run
side by side here, from the harness's venv): each case asks both and compares status codes."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from bench.systems.glance import GlanceSystem
from tests.requirements import require_glance_venv
from tests.server import ServerProcess

PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, httpx.Client]]:
    require_glance_venv()
    root = tmp_path_factory.mktemp("parity")
    glance = GlanceSystem(root / "glance", processes=1).start()
    ours = ServerProcess(root / "imgproxy" / "data", noauth=True).start()
    clients = {name: httpx.Client(base_url=url, headers={"X-Auth-Token": "noauth"}, timeout=30)
               for name, url in (("glance", glance.url), ("imgproxy", ours.url))}
    try:
        yield clients
    finally:
        for c in clients.values():
            c.close()
        ours.stop()
        glance.stop()


@pytest.mark.parametrize("path", ["/v2/images/", "/v2/no-such-thing", "/v7/images", "/v3", "/v1/images",
                                  "/v2/images?changes-since=2020-01-01T00:00:00Z", "/v2/images?sort=bogus",
                                  "/v2/images?limit=-1", "/v2/images?visibility=bogus"])
def test_paths_and_list_parameters_answer_as_glance(both: dict[str, httpx.Client], path: str) -> None:
    codes = {name: c.get(path, follow_redirects=False).status_code for name, c in both.items()}
    assert codes["imgproxy"] == codes["glance"], codes


def test_unknown_version_gets_the_version_list(both: dict[str, httpx.Client]) -> None:
    r = both["imgproxy"].get("/v7/images")
    assert r.status_code == 300 and r.json()["versions"][0]["id"].startswith("v2.")


@pytest.mark.parametrize("key,value", [("disk_format", "qcow2"), ("container_format", "ovf")])
def test_data_formats_are_fixed_once_the_image_has_data(both: dict[str, httpx.Client], key: str, value: str) -> None:
    codes = {}
    for name, c in both.items():
        image_id = c.post("/v2/images", json={"name": "p", "disk_format": "raw", "container_format": "bare"}).json()["id"]
        assert c.put(f"/v2/images/{image_id}/file", content=b"x" * 1024, headers=OCTET).status_code == 204
        r = c.patch(f"/v2/images/{image_id}", json=[{"op": "replace", "path": f"/{key}", "value": value}], headers=PATCH)
        codes[name] = r.status_code
    assert codes == {"glance": 403, "imgproxy": 403}


def test_formats_can_change_while_queued(both: dict[str, httpx.Client]) -> None:
    for c in both.values():
        image_id = c.post("/v2/images", json={"name": "p", "disk_format": "raw", "container_format": "bare"}).json()["id"]
        r = c.patch(f"/v2/images/{image_id}", json=[{"op": "replace", "path": "/disk_format", "value": "qcow2"}],
                    headers=PATCH)
        assert r.status_code == 200 and r.json()["disk_format"] == "qcow2"


def test_upload_before_formats_are_set(both: dict[str, httpx.Client]) -> None:
    codes = {}
    for name, c in both.items():
        image_id = c.post("/v2/images", json={"name": "p"}).json()["id"]
        codes[name] = c.put(f"/v2/images/{image_id}/file", content=b"x" * 16, headers=OCTET).status_code
        assert c.get(f"/v2/images/{image_id}").json()["status"] == "queued"
    assert codes == {"glance": 400, "imgproxy": 400}


def test_default_list_leaves_out_other_projects_community_images(both: dict[str, httpx.Client]) -> None:
    for c in both.values():
        image_id = c.post("/v2/images", json={"name": "comm", "visibility": "community"},
                          headers={"X-Project-Id": "someone-else"}).json()["id"]
        assert image_id not in [i["id"] for i in c.get("/v2/images").json()["images"]]
        assert image_id in [i["id"] for i in c.get("/v2/images", params={"visibility": "community"}).json()["images"]]


def test_noauth_without_a_project_creates_images_with_no_owner(both: dict[str, httpx.Client]) -> None:
    owners = {name: c.post("/v2/images", json={"name": "o"}).json()["owner"] for name, c in both.items()}
    assert owners == {"glance": None, "imgproxy": None}


_LEGACY_INPUT = {"import_from_format": "qcow2",
                 "image_properties": {"name": "t", "disk_format": "qcow2", "container_format": "bare"}}


@pytest.mark.parametrize("body", [
    # tempest's test_task_create_fake_image_location: a host that does not resolve
    {"type": "import", "input": {"import_from": "http://dummy-img-file-b7c1.qcow2", **_LEGACY_INPUT}},
    {"type": "import", "input": {"import_from": "file:///etc/passwd", **_LEGACY_INPUT}},
    {"type": "import", "input": {"import_from": "ftp://example.com/x.qcow2", **_LEGACY_INPUT}},
    {"type": "import"}, {"input": {}}, {"type": "bogus", "input": {}}, {"type": "import", "input": "x"},
], ids=["unresolvable-host", "file", "ftp", "no-input", "no-type", "bad-type", "input-not-object"])
def test_a_legacy_import_task_glance_refuses_at_once_is_400(both: dict[str, httpx.Client],
                                                            body: dict[str, object]) -> None:
    codes = {name: c.post("/v2/tasks", json=body).status_code for name, c in both.items()}
    assert codes == {"glance": 400, "imgproxy": 400}
