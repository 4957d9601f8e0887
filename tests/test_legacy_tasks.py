"""``POST /v2/tasks`` (Glance's legacy ``import`` task) against a real imgproxy, its data served by a
real nginx: the image is created and filled, the task tells how it went; bad tasks are refused
before anything is created. (What Glance answers to bad tasks is compared side by side in
tests/test_glance_parity.py.)"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from imgproxy.tokens import create_token
from tests.nginx_fixtures import NginxStore, nginx_store  # noqa: F401 - fixtures
from tests.server import ServerProcess

pytestmark = pytest.mark.timeout(120)

DATA = os.urandom(3 * 64 * 1024 + 11)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # web-download is not among the offered import methods: the legacy task does not depend on them.
    proc = ServerProcess(tmp_path_factory.mktemp("legacy") / "data", config={
        "chunk_size": 64 * 1024, "enabled_import_methods": ["glance-direct"],
        "import_filtering_opts": {"allowed_ports": [], "allowed_networks": ["127.0.0.0/8"]}})
    with proc:
        yield proc


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"X-Auth-Token": server.admin_token}, timeout=30) as c:
        yield c


def _task(url: str, **properties: Any) -> dict[str, Any]:
    return {"type": "import", "input": {"import_from": url, "import_from_format": "raw", "image_properties": {
        "name": "legacy", "disk_format": "raw", "container_format": "bare", **properties}}}


def _finished(client: httpx.Client, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        task: dict[str, Any] = client.get(f"/v2/tasks/{task_id}").json()
        if task["status"] in ("success", "failure") or time.monotonic() > deadline:
            return task
        time.sleep(0.1)


def test_a_legacy_import_task_creates_and_fills_the_image(admin: httpx.Client, nginx_store: NginxStore) -> None:  # noqa: F811
    body = _task(nginx_store.put("legacy.img", DATA), visibility="public")
    r = admin.post("/v2/tasks", json=body)
    assert r.status_code == 201, r.text
    created = r.json()
    assert r.headers["location"] == f"/v2/tasks/{created['id']}"
    assert created["type"] == "import" and created["status"] == "pending" and created["input"] == body["input"]
    task = _finished(admin, created["id"])
    assert task["status"] == "success", task
    image = admin.get(f"/v2/images/{task['result']['image_id']}").json()
    assert {k: image[k] for k in ("name", "status", "visibility", "disk_format", "size", "checksum")} == {
        "name": "legacy", "status": "active", "visibility": "public", "disk_format": "raw", "size": len(DATA),
        "checksum": hashlib.md5(DATA).hexdigest()}
    assert admin.get(f"/v2/images/{image['id']}/file").content == DATA
    assert created["id"] in [t["id"] for t in admin.get("/v2/tasks", params={"type": "import"}).json()["tasks"]]


def test_a_legacy_import_of_missing_data_fails_its_task(admin: httpx.Client, nginx_store: NginxStore) -> None:  # noqa: F811
    r = admin.post("/v2/tasks", json=_task(nginx_store.url("missing.img")))
    assert r.status_code == 201, r.text
    task = _finished(admin, r.json()["id"])
    assert task["status"] == "failure" and "404" in task["message"]
    assert admin.get(f"/v2/images/{task['image_id']}").json()["status"] == "queued"


@pytest.mark.parametrize("body", [
    _task("http://127.0.0.1:1/x", disk_format=None), {"type": "import", "input": {"import_from": "http://127.0.0.1:1/x"}},
    {"type": "api_image_import", "input": {"image_id": "x"}}, _task("http://169.254.169.254/latest/meta-data"),
], ids=["no-disk-format", "input-incomplete", "other-type", "metadata-service"])
def test_a_bad_legacy_task_is_400_and_creates_no_image(admin: httpx.Client, body: dict[str, Any]) -> None:
    before = len(admin.get("/v2/images").json()["images"])
    r = admin.post("/v2/tasks", json=body)
    assert r.status_code == 400 and r.json()["error"]["message"]
    assert len(admin.get("/v2/images").json()["images"]) == before


def test_only_admins_create_tasks(server: ServerProcess, nginx_store: NginxStore) -> None:  # noqa: F811
    token = create_token(server.data_dir / "tokens.json", project="legacy-member", roles=["member"])
    with httpx.Client(base_url=server.url, headers={"X-Auth-Token": token}, timeout=30) as c:
        while c.get("/v2/images").status_code == 401:  # the tokens file is re-read
            time.sleep(0.05)
        r = c.post("/v2/tasks", json=_task(nginx_store.put("member.img", DATA)))
        assert r.status_code == 403
        assert [i for i in c.get("/v2/images").json()["images"] if i["owner"] == "legacy-member"] == []
