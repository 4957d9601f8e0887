"""openstacksdk against an imgproxy whose store is an object store: S3 on rclone, S3 on Swift's
s3api, and Swift (``image_store`` runs every test once per kind).

What the SDK sends goes to imgproxy over HTTP; what lands in the store is looked at with the
store's own client. Downloads are made after the image left the cache, so their bytes come
from the store, and the SDK checks them against the image's checksum.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import openstack
import pytest
from openstack import exceptions

from tests.helpers import drop_from_cache, unique, wait_for
from tests.image_store_fixtures import ImageStore, image_store, swift_server  # noqa: F401 - fixtures
from tests.server import ServerProcess
from tests.test_openstacksdk import PAYLOAD, connect_token

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def imgproxy(image_store: ImageStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One imgproxy per store kind; small chunks, so an image is several of them."""
    config = {**image_store.config, "chunk_size": 64 * 1024, "prefetch_interval": 0}
    with ServerProcess(tmp_path_factory.mktemp("sdk-store") / "data", config=config) as proc:
        yield proc


@pytest.fixture(scope="module")
def conn(imgproxy: ServerProcess) -> "openstack.connection.Connection":
    return connect_token(imgproxy.url, imgproxy.admin_token)


@pytest.fixture
def payload_file(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(PAYLOAD)
    return path


def read_back_from_the_store(conn: "openstack.connection.Connection", imgproxy: ServerProcess, image_id: str,
                             tmp_path: Path) -> None:
    """The image leaves the cache; the SDK downloads it (whole and in pieces) and checks its md5."""
    with httpx.Client(base_url=imgproxy.url, headers={"X-Auth-Token": imgproxy.admin_token}, timeout=30) as api:
        drop_from_cache(api, image_id)
    assert conn.image.download_image(image_id).content == PAYLOAD
    with httpx.Client(base_url=imgproxy.url, headers={"X-Auth-Token": imgproxy.admin_token}, timeout=30) as api:
        drop_from_cache(api, image_id)
    target = tmp_path / "out.img"
    conn.image.download_image(image_id, output=str(target), chunk_size=48 * 1024)
    assert target.read_bytes() == PAYLOAD


def delete_and_see_it_gone(conn: "openstack.connection.Connection", image_store: ImageStore, image_id: str) -> None:
    conn.image.delete_image(image_id, ignore_missing=False)
    with pytest.raises(exceptions.NotFoundException):
        conn.image.get_image(image_id)
    assert wait_for(lambda: image_store.objects(image_id) == set()), image_store.objects(image_id)


def test_upload_download_delete(conn: "openstack.connection.Connection", imgproxy: ServerProcess,
                                image_store: ImageStore, payload_file: Path, tmp_path: Path) -> None:
    created = conn.image.create_image(name=unique("sdk"), filename=str(payload_file), disk_format="raw",
                                      container_format="bare")
    image = conn.image.get_image(created.id)
    assert image.status == "active" and image.size == len(PAYLOAD)
    assert image.checksum == hashlib.md5(PAYLOAD).hexdigest()
    assert image.hash_algo == "sha512" and image.hash_value == hashlib.sha512(PAYLOAD).hexdigest()
    assert image_store.objects(image.id), f"nothing of {image.id} in the {image_store.kind} store"

    read_back_from_the_store(conn, imgproxy, image.id, tmp_path)
    delete_and_see_it_gone(conn, image_store, image.id)


def test_glance_direct_import(conn: "openstack.connection.Connection", imgproxy: ServerProcess,
                              image_store: ImageStore, payload_file: Path, tmp_path: Path) -> None:
    """The cloud layer's ``use_import``: stage the file, then import it with glance-direct."""
    created = conn.create_image(unique("sdk-import"), filename=str(payload_file), disk_format="raw",
                                container_format="bare", use_import=True)
    assert created is not None
    # The cloud layer's ``wait`` stops at ``importing``; the proxy's waits for the status named.
    image = conn.image.wait_for_status(conn.image.get_image(created.id), "active", failures=["killed", "queued"],
                                       interval=0.2, wait=60)
    assert image.size == len(PAYLOAD) and image.checksum == hashlib.md5(PAYLOAD).hexdigest()
    assert image_store.objects(image.id), f"nothing of {image.id} in the {image_store.kind} store"

    read_back_from_the_store(conn, imgproxy, image.id, tmp_path)
    delete_and_see_it_gone(conn, image_store, image.id)
