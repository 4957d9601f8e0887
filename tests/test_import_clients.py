"""The real clients drive interoperable import: ``glance image-create-via-import`` with each method,
``glance image-import``/``image-tasks``/``task-show``/``task-list``, and openstacksdk's
``create_image(..., use_import=True)``. What is asserted is what the client printed or returned,
and the data the image then serves.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openstack
import pytest

from tests.nginx_fixtures import NginxStore, nginx_store  # noqa: F401 - fixture
from tests.server import ServerProcess
from tests.test_glanceclient import _close_stdin, parse_rows, parse_table

pytestmark = pytest.mark.timeout(180)

CHUNK = 64 * 1024
DATA = os.urandom(3 * CHUNK + 11)
METHODS = ["glance-direct", "web-download", "copy-image", "glance-download"]


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The other region: an imgproxy that holds an image to glance-download."""
    proc = ServerProcess(tmp_path_factory.mktemp("remote") / "data", noauth=True, config={"chunk_size": CHUNK})
    with proc:
        yield proc


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, remote: ServerProcess) -> Iterator[ServerProcess]:
    config = {"chunk_size": CHUNK, "enabled_import_methods": METHODS,
              "import_filtering_opts": {"allowed_ports": [], "allowed_networks": ["127.0.0.0/8"]},
              "glance_download": {"regions": {"RegionTwo": remote.url}}}
    proc = ServerProcess(tmp_path_factory.mktemp("target") / "data", config=config)
    with proc:
        yield proc


@pytest.fixture
def glance(target: ServerProcess, tmp_path: Path) -> Callable[..., str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "IMGPROXY_"))}

    def run(*args: str) -> str:
        cmd = ["glance", "--os-image-url", target.url, "--os-auth-token", target.admin_token, *args]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
                           preexec_fn=_close_stdin)
        assert r.returncode == 0, f"{' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout

    return run


def wait_active(url: str, token: str, image_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        image: dict[str, Any] = httpx.get(f"{url}/v2/images/{image_id}", headers={"X-Auth-Token": token}).json()
        if image["status"] == "active" or time.monotonic() > deadline:
            assert image["status"] == "active", image
            return image
        time.sleep(0.05)


def check_data(target: ServerProcess, image_id: str) -> None:
    image = wait_active(target.url, target.admin_token, image_id)
    assert image["os_hash_value"] == hashlib.sha512(DATA).hexdigest()
    got = httpx.get(f"{target.url}/v2/images/{image_id}/file", headers={"X-Auth-Token": target.admin_token})
    assert got.content == DATA


def _name() -> str:
    return f"imp-{uuid.uuid4().hex[:10]}"


def test_glance_cli_glance_direct(glance: Callable[..., str], target: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(DATA)
    assert "glance-direct" in parse_table(glance("import-info"))["import-methods"]
    props = parse_table(glance("image-create-via-import", "--name", _name(), "--disk-format", "raw",
                               "--container-format", "bare", "--file", str(path)))
    check_data(target, props["id"])
    rows = parse_rows(glance("image-tasks", props["id"]))
    assert rows and rows[0][1] == "success"
    task_id = httpx.get(f"{target.url}/v2/images/{props['id']}/tasks",
                        headers={"X-Auth-Token": target.admin_token}).json()["tasks"][0]["id"]
    shown = parse_table(glance("task-show", task_id))
    assert shown["status"] == "success" and shown["type"] == "api_image_import"
    assert task_id in glance("task-list")


def test_glance_cli_web_download(glance: Callable[..., str], target: ServerProcess,
                                 nginx_store: NginxStore) -> None:  # noqa: F811
    url = nginx_store.put("cli.img", DATA)
    props = parse_table(glance("image-create-via-import", "--name", _name(), "--disk-format", "raw",
                               "--container-format", "bare", "--import-method", "web-download", "--uri", url))
    check_data(target, props["id"])


def test_glance_cli_glance_download(glance: Callable[..., str], target: ServerProcess, remote: ServerProcess) -> None:
    with httpx.Client(base_url=remote.url) as src:
        remote_id = src.post("/v2/images", json={"disk_format": "iso", "container_format": "ova",
                                                 "os_distro": "cirros"}).json()["id"]
        assert src.put(f"/v2/images/{remote_id}/file", content=DATA,
                       headers={"Content-Type": "application/octet-stream"}).status_code == 204
    props = parse_table(glance("image-create-via-import", "--name", _name(), "--disk-format", "raw",
                               "--container-format", "bare", "--import-method", "glance-download",
                               "--remote-region", "RegionTwo", "--remote-image-id", remote_id))
    check_data(target, props["id"])
    shown = parse_table(glance("image-show", props["id"]))
    assert shown["disk_format"] == "iso" and shown["container_format"] == "ova" and shown["os_distro"] == "cirros"


def test_glance_cli_image_stage_then_import(glance: Callable[..., str], target: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(DATA)
    image_id = parse_table(glance("image-create", "--name", _name(), "--disk-format", "raw",
                                  "--container-format", "bare"))["id"]
    glance("image-stage", image_id, "--file", str(path))
    assert parse_table(glance("image-show", image_id))["status"] == "uploading"
    glance("image-import", image_id, "--import-method", "glance-direct")
    check_data(target, image_id)


def connect(target: ServerProcess) -> "openstack.connection.Connection":
    return openstack.connect(auth_type="admin_token", auth={"token": target.admin_token, "endpoint": target.url},
                             image_endpoint_override=target.url)


def test_openstacksdk_use_import(target: ServerProcess, tmp_path: Path, nginx_store: NginxStore,  # noqa: F811
                                 remote: ServerProcess) -> None:
    conn = connect(target)
    path = tmp_path / "disk.img"
    path.write_bytes(DATA)
    direct = conn.create_image(_name(), filename=str(path), disk_format="raw", container_format="bare",
                               use_import=True)
    check_data(target, direct.id)
    web = conn.image.create_image(name=_name(), disk_format="raw", container_format="bare", use_import=True,
                                  import_method="web-download", uri=nginx_store.put("sdk.img", DATA))
    check_data(target, web.id)
    with httpx.Client(base_url=remote.url) as src:
        remote_id = src.post("/v2/images", json={"disk_format": "raw", "container_format": "bare"}).json()["id"]
        src.put(f"/v2/images/{remote_id}/file", content=DATA, headers={"Content-Type": "application/octet-stream"})
    downloaded = conn.image.create_image(name=_name(), disk_format="raw", container_format="bare", use_import=True,
                                         import_method="glance-download", remote_region="RegionTwo",
                                         remote_image_id=remote_id, remote_service_interface="public")
    check_data(target, downloaded.id)
