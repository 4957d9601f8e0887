"""Stage and import inspect the data as it passes (imgproxy.formats), with real qemu-img images:
an unsafe or mismatched image is refused at ``PUT /stage`` (415, nothing staged) and fails its
web-download (task failure, image queued, nothing stored); an accepted one gets its virtual size."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.format_images import FormatImages, qemu_info, require_qemu_img
from tests.import_helpers import new_image, stage, start_import, wait_task, web_download
from tests.nginx_fixtures import NginxStore, nginx_store  # noqa: F401 - fixture
from tests.server import ServerProcess

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> FormatImages:
    require_qemu_img()
    return FormatImages(tmp_path_factory.mktemp("import-images"))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, ServerProcess]]:
    config = {"import_filtering_opts": {"allowed_ports": [], "allowed_networks": ["127.0.0.0/8"]}}
    server = ServerProcess(tmp_path_factory.mktemp("import-inspect") / "data", noauth=True, config=config)
    with server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            yield client, server


def test_stage_refuses_an_unsafe_image(api: tuple[httpx.Client, ServerProcess], images: FormatImages) -> None:
    client, server = api
    image_id = new_image(client, disk_format="qcow2")
    r = stage(client, image_id, images.data("qcow2-backing"))
    assert r.status_code == 415 and "disk_format" in r.json()["error"]["message"]
    assert client.get(f"/v2/images/{image_id}").json()["status"] == "queued"
    assert not [p for p in (server.data_dir / "staging").iterdir() if image_id in p.name]
    good = images.data("qcow2-v3")
    assert stage(client, image_id, good).status_code == 204
    assert start_import(client, image_id, "glance-direct").status_code == 202
    task, image = wait_task(client, image_id)
    assert task["status"] == "success" and image["status"] == "active"
    assert image["virtual_size"] == qemu_info(images.path("qcow2-v3"), "qcow2")["virtual-size"]


@pytest.mark.parametrize("name,disk_format", [("qcow2-v3", "raw"), ("vmdk-flat", "vmdk"),
                                              ("qcow2-data-file", "qcow2")])
def test_web_download_of_a_refused_image_fails(api: tuple[httpx.Client, ServerProcess], images: FormatImages,
                                               nginx_store: NginxStore, name: str, disk_format: str) -> None:  # noqa: F811
    client, server = api
    url = nginx_store.put(f"{name}.img", images.data(name))
    image_id = new_image(client, disk_format=disk_format)
    assert web_download(client, image_id, url).status_code == 202
    task, image = wait_task(client, image_id)
    assert task["status"] == "failure" and "disk_format" in task["message"], task
    assert image["status"] == "queued" and image["os_glance_failed_import"] == "file"
    assert image["virtual_size"] is None and image["size"] is None
    assert not [p for p in (server.data_dir / "images").iterdir() if image_id in p.name]


def test_web_download_sets_the_virtual_size(api: tuple[httpx.Client, ServerProcess], images: FormatImages,
                                            nginx_store: NginxStore) -> None:  # noqa: F811
    client, _ = api
    url = nginx_store.put("vhdx.img", images.data("vhdx"))
    image_id = new_image(client, disk_format="vhdx")
    assert web_download(client, image_id, url).status_code == 202
    task, image = wait_task(client, image_id)
    assert task["status"] == "success", task
    assert image["virtual_size"] == qemu_info(images.path("vhdx"), "vhdx")["virtual-size"]
