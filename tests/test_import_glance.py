"""glance-download from the real Glance 33 (noauth, the harness's setup in ``bench/systems/glance.py``;
install it with ``python -m bench setup-glance``): imgproxy imports an image Glance holds."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator

import httpx
import pytest

from bench.systems.glance import GlanceSystem
from tests.import_helpers import new_image, start_import, wait_task
from tests.requirements import require_glance_venv
from tests.server import ServerProcess

pytestmark = pytest.mark.timeout(180)

DATA = os.urandom(300 * 1024 + 9)


@pytest.fixture(scope="module")
def glance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlanceSystem]:
    require_glance_venv()
    system = GlanceSystem(tmp_path_factory.mktemp("glance") / "glance", processes=1).start()
    try:
        yield system
    finally:
        system.stop()


def test_glance_download_from_glance(glance: GlanceSystem, server_factory: Callable[..., ServerProcess]) -> None:
    with httpx.Client(base_url=glance.url, headers={"X-Auth-Token": "noauth"}, timeout=60) as g:
        remote_id = g.post("/v2/images", json={"name": "in-glance", "disk_format": "raw", "container_format": "bare",
                                               "hw_qemu_guest_agent": "yes"}).json()["id"]
        r = g.put(f"/v2/images/{remote_id}/file", content=DATA, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 204, r.text
        assert g.get(f"/v2/images/{remote_id}").json()["os_hash_value"] == hashlib.sha512(DATA).hexdigest()
    config = {"chunk_size": 64 * 1024, "enabled_import_methods": ["glance-download"],
              "glance_download": {"regions": {"RegionOne": {"public": glance.url, "token": "noauth"}}}}
    proc = server_factory(noauth=True, config=config)
    with httpx.Client(base_url=proc.url, timeout=30) as c:
        image_id = new_image(c, disk_format="qcow2", container_format="ova")  # Glance's formats win
        r = start_import(c, image_id, "glance-download", glance_region="RegionOne", glance_image_id=remote_id,
                         glance_service_interface="public")
        assert r.status_code == 202, r.text
        task, image = wait_task(c, image_id)
        assert task["status"] == "success", task
        assert image["status"] == "active" and image["os_hash_value"] == hashlib.sha512(DATA).hexdigest()
        assert image["container_format"] == "bare" and image["hw_qemu_guest_agent"] == "yes"
        assert c.get(f"/v2/images/{image_id}/file").content == DATA
        r = start_import(c, new_image(c), "glance-download", glance_region="RegionOne",
                         glance_image_id=remote_id, glance_service_interface="internal")
        assert r.status_code == 400 and "internal" in r.json()["error"]["message"]
