"""Uploads are inspected as they stream (imgproxy.formats) over HTTP, with real qemu-img images:
the verdict sets ``virtual_size``; data that contradicts ``disk_format`` or is unsafe is refused
with 415 (as Glance 33), the image stays ``queued`` and nothing is kept in the store."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.format_images import FormatImages, qemu_info, require_qemu_img
from tests.server import ServerProcess

OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> FormatImages:
    require_qemu_img()
    return FormatImages(tmp_path_factory.mktemp("upload-images"))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, ServerProcess]]:
    server = ServerProcess(tmp_path_factory.mktemp("inspect") / "data", noauth=True)
    with server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            yield client, server


def _new(client: httpx.Client, disk_format: str | None, container_format: str | None = "bare") -> str:
    body = {"name": "inspected", "disk_format": disk_format, "container_format": container_format}
    r = client.post("/v2/images", json={k: v for k, v in body.items() if v is not None})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.mark.parametrize("name,disk_format", [("qcow2-v3", "qcow2"), ("vmdk-stream", "vmdk"), ("vhdx", "vhdx"),
                                              ("raw", "raw")])
def test_accepted_image_gets_its_virtual_size(api: tuple[httpx.Client, ServerProcess], images: FormatImages,
                                              name: str, disk_format: str) -> None:
    client, _ = api
    image_id = _new(client, disk_format)
    data = images.data(name)
    assert client.put(f"/v2/images/{image_id}/file", content=data, headers=OCTET).status_code == 204
    record = client.get(f"/v2/images/{image_id}").json()
    assert record["status"] == "active" and record["size"] == len(data)
    assert record["virtual_size"] == qemu_info(images.path(name), disk_format)["virtual-size"]
    assert client.get(f"/v2/images/{image_id}/file").content == data


@pytest.mark.parametrize("name,disk_format", [
    ("qcow2-v3", "raw"),  # a qcow2 hidden in "raw"
    ("raw", "qcow2"),  # declared qcow2, is not
    ("qcow2-backing", "qcow2"),  # points at a backing file
    ("qcow2-data-file", "qcow2"),  # an external data file
    ("vmdk-flat", "vmdk"),  # a descriptor that points at other files
])
def test_refused_image_is_415_and_keeps_nothing(api: tuple[httpx.Client, ServerProcess], images: FormatImages,
                                                name: str, disk_format: str) -> None:
    client, server = api
    image_id = _new(client, disk_format)
    r = client.put(f"/v2/images/{image_id}/file", content=images.data(name), headers=OCTET)
    assert r.status_code == 415, r.text
    assert "disk_format" in r.json()["error"]["message"]
    record = client.get(f"/v2/images/{image_id}").json()
    assert record["status"] == "queued" and record["size"] is None and record["virtual_size"] is None
    assert not (server.data_dir / "images" / image_id).exists()
    assert not [p for p in (server.data_dir / "images").iterdir() if image_id in p.name]  # no temp either
    # The image can still take a right upload.
    if disk_format == "qcow2":
        good = images.data("qcow2-v2")
        assert client.put(f"/v2/images/{image_id}/file", content=good, headers=OCTET).status_code == 204


def test_container_data_is_not_inspected(api: tuple[httpx.Client, ServerProcess], images: FormatImages) -> None:
    """Glance inspects bare data only: an ova's bytes are an archive, not the disk."""
    client, _ = api
    image_id = _new(client, "raw", "ova")
    assert client.put(f"/v2/images/{image_id}/file", content=images.data("qcow2-v3"), headers=OCTET).status_code == 204


@pytest.mark.parametrize("missing", ["disk_format", "container_format"])
def test_upload_before_formats_are_set_is_400_and_stays_queued(api: tuple[httpx.Client, ServerProcess],
                                                                missing: str) -> None:
    """As Glance 33: the formats must be set before data is uploaded."""
    client, _ = api
    image_id = _new(client, None if missing == "disk_format" else "raw",
                    None if missing == "container_format" else "bare")
    r = client.put(f"/v2/images/{image_id}/file", content=b"data", headers=OCTET)
    assert r.status_code == 400 and "prior to uploading" in r.json()["error"]["message"]
    assert client.get(f"/v2/images/{image_id}").json()["status"] == "queued"
