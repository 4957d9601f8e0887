"""``imgproxy serve`` with ``store = "swift://..."`` against a real Swift on loopback.

Everything goes over HTTP: the Image API to imgproxy, and Swift's own API to look at what
landed in the container (and to seed an image exactly as Glance's swift driver writes one).
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.servers.swift import SwiftServer
from tests.backend_contract import payload
from tests.server import ServerProcess, free_port
from tests.swift_fixtures import new_container, store_options, swift_api, swift_server  # noqa: F401 - fixture
from tests.swift_fixtures import object_names as names
from tests.test_backend_swift import seed_glance_dlo
from tests.helpers import drop_from_cache, wait_for

pytestmark = pytest.mark.timeout(180)

SEGMENT = 700_000
CHUNK = 1024 * 1024
DATA = payload(3 * SEGMENT + 1234, 60)  # an SLO of four segments, three cache chunks
# Each test uploads bytes of its own: the cache keeps chunks that another image shares.


def swift_table(server: SwiftServer, **more: Any) -> dict[str, Any]:
    return store_options(server, segment_size=SEGMENT, **{"timeout": 5, **more})


def config(container: str, swift: dict[str, Any]) -> dict[str, object]:
    return {"store": f"swift://{container}", "chunk_size": CHUNK, "upstream_retries": 0, "swift": swift}


@pytest.fixture(scope="module")
def api(swift_server: SwiftServer) -> Iterator[httpx.Client]:
    with swift_api(swift_server) as client:
        yield client


@pytest.fixture(scope="module")
def container(api: httpx.Client) -> str:
    return new_container(api, "images")


@pytest.fixture(scope="module")
def imgproxy(swift_server: SwiftServer, container: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("swift-e2e") / "data", config=config(container, swift_table(swift_server))) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(imgproxy: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=imgproxy.url, headers={"X-Auth-Token": imgproxy.admin_token}, timeout=60) as c:
        yield c


def create(client: httpx.Client) -> str:
    response = client.post("/v2/images", json={"name": f"sw-{uuid.uuid4().hex[:8]}", "disk_format": "raw",
                                               "container_format": "bare"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def upload(client: httpx.Client, data: bytes) -> str:
    image_id = create(client)
    response = client.put(f"/v2/images/{image_id}/file", content=data,
                          headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 204, response.text
    return image_id


def test_upload_download_delete(client: httpx.Client, api: httpx.Client, container: str) -> None:
    image_id = upload(client, DATA)
    assert client.get(f"/v2/images/{image_id}").json()["status"] == "active"
    stored = {n for n in names(api, container) if image_id in n}
    assert image_id in stored and len(stored) == 5  # the manifest and four segments
    assert api.head(f"/{container}/{image_id}").headers["x-static-large-object"].lower() == "true"

    drop_from_cache(client, image_id)
    upstream = client.get("/v2/cache/stats").json()["bytes_upstream"]
    whole = client.get(f"/v2/images/{image_id}/file")
    assert whole.status_code == 200 and whole.content == DATA
    start, end = SEGMENT - 3, 2 * SEGMENT + 3
    drop_from_cache(client, image_id)
    part = client.get(f"/v2/images/{image_id}/file", headers={"Range": f"bytes={start}-{end - 1}"})
    assert part.status_code == 206 and part.content == DATA[start:end]
    assert client.get("/v2/cache/stats").json()["bytes_upstream"] > upstream  # both read from Swift

    assert client.delete(f"/v2/images/{image_id}").status_code == 204
    assert wait_for(lambda: not {n for n in names(api, container) if image_id in n}), names(api, container)


def test_image_glance_wrote_into_the_container_is_readable(client: httpx.Client, api: httpx.Client, container: str) -> None:
    image_id = create(client)
    data = payload(4 * 300_000 + 99, 61)
    seed_glance_dlo(api, container, image_id, data, 300_000)
    response = client.post(f"/v2/images/{image_id}/locations", json={"url": f"swift://{container}/{image_id}"})
    assert response.status_code == 202, response.text
    assert wait_for(lambda: client.get(f"/v2/images/{image_id}").json()["status"] == "active")
    drop_from_cache(client, image_id)
    part = client.get(f"/v2/images/{image_id}/file", headers={"Range": "bytes=299990-600009"})
    assert part.status_code == 206 and part.content == data[299990:600010]
    assert client.get(f"/v2/images/{image_id}/file").content == data


def test_glanceclient_upload_and_download(imgproxy: ServerProcess, api: httpx.Client, container: str) -> None:
    import glanceclient

    glance = glanceclient.Client("2", endpoint=imgproxy.url, token=imgproxy.admin_token)
    image = glance.images.create(name=f"gc-{uuid.uuid4().hex[:8]}", disk_format="raw", container_format="bare")
    data = payload(len(DATA), 64)
    glance.images.upload(image.id, io.BytesIO(data), image_size=len(data))
    assert glance.images.get(image.id).status == "active"
    assert image.id in names(api, container)
    with httpx.Client(base_url=imgproxy.url, headers={"X-Auth-Token": imgproxy.admin_token}) as c:
        drop_from_cache(c, image.id)
    assert b"".join(glance.images.data(image.id)) == data  # the client checks os_hash_value too
    glance.images.delete(image.id)
    assert wait_for(lambda: not {n for n in names(api, container) if image.id in n})


def _error_message(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/json"), response.text
    return str(response.json())


@pytest.mark.parametrize("problem", ["bad key", "unreachable"])
def test_store_that_cannot_serve(
    problem: str, swift_server: SwiftServer, container: str, imgproxy: ServerProcess, client: httpx.Client,
    tmp_path: Path,
) -> None:
    """The service starts with a warning naming the store; what needs the store gets 503."""
    # Own bytes: chunks another image shares would stay in the cache when this one is dropped.
    image_id = upload(client, payload(len(DATA), 62 if problem == "bad key" else 63))  # stored while the store worked
    imgproxy.stop()
    try:
        broken = swift_table(swift_server, key="wrong-key") if problem == "bad key" else swift_table(
            swift_server, auth_url=f"http://127.0.0.1:{free_port()}/auth/v1.0")
        with ServerProcess(imgproxy.data_dir, config=config(container, broken)) as proc:
            assert wait_for(lambda: f"store swift://{container} is unavailable at start-up" in proc.log()), proc.log()
            with httpx.Client(base_url=proc.url, headers={"X-Auth-Token": proc.admin_token}, timeout=30) as c:
                assert c.get(f"/v2/images/{image_id}").status_code == 200  # the rest works
                drop_from_cache(c, image_id)
                down = c.get(f"/v2/images/{image_id}/file")
                assert down.status_code == 503 and f"swift://{container}" in _error_message(down)
                new = create(c)
                up = c.put(f"/v2/images/{new}/file", content=b"x" * 1000,
                           headers={"Content-Type": "application/octet-stream"})
                assert up.status_code == 503 and f"swift://{container}" in _error_message(up)
                assert c.get(f"/v2/images/{new}").json()["status"] == "queued"
            assert "wrong-key" not in proc.log()
    finally:
        imgproxy.start()
