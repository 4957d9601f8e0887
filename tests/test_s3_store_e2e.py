"""``imgproxy serve`` with an S3 bucket as its store, against a real S3 server on loopback.

Everything goes over HTTP to the service (and, for the glance client, through the client);
the bucket is inspected with an S3 client of the test's own.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import obstore
import pytest

from backends.s3_options import MiB
from tests.backend_contract import payload
from tests.s3_fixtures import S3Server, s3_prefix, s3_server  # noqa: F401 - fixtures
from tests.server import ServerProcess, free_port

pytestmark = pytest.mark.timeout(180)

# Over one 5 MiB part: the upload goes to the bucket as a multipart upload.
DATA = payload(11 * MiB + 123, 50)


def _config(server: S3Server, prefix: str, **s3: object) -> dict[str, Any]:
    return {
        "store": server.url(prefix),
        "s3": server.options(part_size=5 * MiB, **s3),
        "chunk_size": MiB,
        "prefetch_interval": 0,
    }


@pytest.fixture
def imgproxy_on_s3(s3_server: S3Server, s3_prefix: str, tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "data", config=_config(s3_server, s3_prefix)) as proc:
        yield proc


def _client(proc: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=proc.url, headers={"X-Auth-Token": proc.admin_token}, timeout=60)


def _create(api: httpx.Client) -> str:
    r = api.post("/v2/images", json={"name": "on-s3", "disk_format": "raw", "container_format": "bare"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _upload(api: httpx.Client, image_id: str, data: bytes) -> httpx.Response:
    return api.put(f"/v2/images/{image_id}/file", content=data, headers={"Content-Type": "application/octet-stream"})


def _object(server: S3Server, prefix: str, image_id: str) -> bytes:
    return bytes(obstore.get(server.raw(prefix), image_id).bytes())


def _wait_for(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def test_upload_download_delete(imgproxy_on_s3: ServerProcess, s3_server: S3Server, s3_prefix: str) -> None:
    with _client(imgproxy_on_s3) as api:
        image_id = _create(api)
        assert _upload(api, image_id, DATA).status_code == 204
        image = api.get(f"/v2/images/{image_id}").json()
        assert image["status"] == "active" and image["size"] == len(DATA)
        assert image["checksum"] == hashlib.md5(DATA).hexdigest()
        assert s3_server.files(s3_prefix) == {f"{s3_prefix}/{image_id}"}
        assert _object(s3_server, s3_prefix, image_id) == DATA

        # Drop the cached copy: what follows is read from the bucket (ranged reads per chunk).
        assert api.delete(f"/v2/cache/{image_id}").status_code in (200, 204)
        start, end = 3 * MiB - 5, 7 * MiB + 11
        r = api.get(f"/v2/images/{image_id}/file", headers={"Range": f"bytes={start}-{end}"})
        assert r.status_code == 206 and r.content == DATA[start : end + 1]
        assert r.headers["content-range"] == f"bytes {start}-{end}/{len(DATA)}"
        r = api.get(f"/v2/images/{image_id}/file")
        assert r.status_code == 200 and r.content == DATA

        assert api.delete(f"/v2/images/{image_id}").status_code == 204
        assert _wait_for(lambda: s3_server.files(s3_prefix) == set()), s3_server.files(s3_prefix)
        assert api.get(f"/v2/images/{image_id}/file").status_code == 404


def test_glanceclient_upload_and_download(imgproxy_on_s3: ServerProcess, s3_server: S3Server, s3_prefix: str) -> None:
    import glanceclient

    glance = glanceclient.Client("2", endpoint=imgproxy_on_s3.url, token=imgproxy_on_s3.admin_token)
    image = glance.images.create(name="gc-on-s3", disk_format="raw", container_format="bare")
    glance.images.upload(image.id, io.BytesIO(DATA), image_size=len(DATA))
    assert glance.images.get(image.id).status == "active"
    assert _object(s3_server, s3_prefix, image.id) == DATA
    # The client checks what it receives against os_hash_value.
    assert b"".join(glance.images.data(image.id)) == DATA
    glance.images.delete(image.id)
    assert _wait_for(lambda: s3_server.files(s3_prefix) == set())


# --- a store that cannot be used -----------------------------------------------------


def _assert_store_error(r: httpx.Response, server: S3Server, prefix: str, secret: str | None = None) -> None:
    assert r.status_code == 503, r.text
    message = r.json()["error"]["message"]
    assert server.url(prefix) in message  # names the store
    if secret is not None:
        assert secret not in r.text


def test_wrong_credentials_start_with_a_warning_and_answer_503(
    s3_server: S3Server, s3_prefix: str, tmp_path: Path
) -> None:
    secret = "not-the-right-secret-42"
    data_dir = tmp_path / "data"
    # An image stored while the credentials were right...
    with ServerProcess(data_dir, config=_config(s3_server, s3_prefix)) as proc, _client(proc) as api:
        image_id = _create(api)
        assert _upload(api, image_id, DATA).status_code == 204
        assert api.delete(f"/v2/cache/{image_id}").status_code in (200, 204)
    # ...then the service restarts with a wrong secret.
    with ServerProcess(data_dir, config=_config(s3_server, s3_prefix, secret_key=secret)) as proc, _client(proc) as api:
        assert _wait_for(lambda: "is unavailable at start-up" in proc.log()), proc.log()
        warning = next(line for line in proc.log().splitlines() if "is unavailable at start-up" in line)
        assert s3_server.url(s3_prefix) in warning and secret not in proc.log()
        assert api.get("/versions").status_code == 200  # up for what needs no store
        assert api.get(f"/v2/images/{image_id}").json()["status"] == "active"
        _assert_store_error(api.get(f"/v2/images/{image_id}/file"), s3_server, s3_prefix, secret)
        _assert_store_error(_upload(api, _create(api), b"new image"), s3_server, s3_prefix, secret)


def test_unreachable_store_starts_with_a_warning_and_answers_503(s3_server: S3Server, tmp_path: Path) -> None:
    gone = f"http://127.0.0.1:{free_port()}"
    config = _config(s3_server, "nowhere", endpoint=gone, retries=0)
    with ServerProcess(tmp_path / "data", config=config) as proc, _client(proc) as api:
        assert _wait_for(lambda: "is unavailable at start-up" in proc.log()), proc.log()
        assert gone in proc.log()
        _assert_store_error(_upload(api, _create(api), b"x" * 1000), s3_server, "nowhere")
