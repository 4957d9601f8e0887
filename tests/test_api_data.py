"""Image data over HTTP: ``PUT``/``GET``/``HEAD /v2/images/{id}/file`` against a real server."""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.server import ServerProcess
from tests.helpers import payload

OCTET = {"Content-Type": "application/octet-stream"}
MiB = 1024 * 1024


def create_image(client: httpx.Client, **fields: object) -> str:
    body = {"name": f"data-{uuid.uuid4().hex[:8]}", "disk_format": "raw", "container_format": "bare", **fields}
    response = client.post("/v2/images", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def upload(client: httpx.Client, image_id: str, data: bytes, **headers: str) -> httpx.Response:
    return client.put(f"/v2/images/{image_id}/file", content=data, headers={**OCTET, **headers})


def status_of(client: httpx.Client, image_id: str) -> str:
    return str(client.get(f"/v2/images/{image_id}").json()["status"])


def wait_status(client: httpx.Client, image_id: str, wanted: str, timeout: float = 10.0) -> str:
    """The server notices a vanished client asynchronously; poll until it has (not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while (status := status_of(client, image_id)) != wanted and time.monotonic() < deadline:
        time.sleep(0.05)
    return status


def stored_names(server: ServerProcess, image_id: str) -> list[str]:
    """Files of this image in the file store, committed or temp."""
    root = server.data_dir / "images"
    return [n for n in os.listdir(root) if image_id in n] if root.exists() else []


def accepted(client: httpx.Client, timeout: float = 10.0) -> httpx.Client:
    """Wait until the server has read the client's new token from the tokens file."""
    deadline = time.monotonic() + timeout
    while client.get("/v2/images", params={"limit": 1}).status_code == 401 and time.monotonic() < deadline:
        time.sleep(0.05)
    return client


@pytest.fixture(scope="module")
def member_of(client_for: Callable[..., httpx.Client]) -> Callable[..., httpx.Client]:
    return lambda project, role="member": accepted(client_for(project, role))


@pytest.fixture(scope="module")
def owner(member_of: Callable[..., httpx.Client]) -> httpx.Client:
    return member_of(f"proj-data-{uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="module")
def active_image(owner: httpx.Client) -> tuple[str, bytes]:
    """One active image spanning several store pieces, shared by the read-only tests."""
    data = payload(3 * MiB + 12345, 1)
    image_id = create_image(owner)
    assert upload(owner, image_id, data).status_code == 204
    return image_id, data


# ---- upload -------------------------------------------------------------------------


def test_upload_then_download_roundtrip(owner: httpx.Client, active_image: tuple[str, bytes]) -> None:
    image_id, data = active_image
    image = owner.get(f"/v2/images/{image_id}").json()
    assert image["status"] == "active"
    assert image["size"] == len(data)
    assert image["checksum"] == hashlib.md5(data).hexdigest()
    assert image["os_hash_algo"] == "sha512"
    assert image["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert not any(key.startswith("_") for key in image)

    response = owner.get(f"/v2/images/{image_id}/file")
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["content-md5"] == hashlib.md5(data).hexdigest()  # hex, as Glance sends it
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["accept-ranges"] == "bytes"


def test_chunked_upload_without_content_length(owner: httpx.Client) -> None:
    data = payload(2 * MiB + 7, 2)
    image_id = create_image(owner)

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(data), 100_000):
            yield data[i : i + 100_000]

    assert owner.put(f"/v2/images/{image_id}/file", content=pieces(), headers=OCTET).status_code == 204
    image = owner.get(f"/v2/images/{image_id}").json()
    assert (image["size"], image["os_hash_value"]) == (len(data), hashlib.sha512(data).hexdigest())
    assert owner.get(f"/v2/images/{image_id}/file").content == data


def test_empty_upload(owner: httpx.Client) -> None:
    image_id = create_image(owner)
    assert upload(owner, image_id, b"").status_code == 204
    image = owner.get(f"/v2/images/{image_id}").json()
    assert (image["status"], image["size"], image["checksum"]) == ("active", 0, hashlib.md5(b"").hexdigest())
    response = owner.get(f"/v2/images/{image_id}/file")
    assert (response.status_code, response.content) == (200, b"")


def test_upload_twice_is_conflict(owner: httpx.Client, active_image: tuple[str, bytes]) -> None:
    image_id, data = active_image
    assert upload(owner, image_id, b"other bytes").status_code == 409
    assert owner.get(f"/v2/images/{image_id}/file").content == data


def test_upload_needs_octet_stream(owner: httpx.Client) -> None:
    image_id = create_image(owner)
    response = owner.put(f"/v2/images/{image_id}/file", content=b"abc", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert status_of(owner, image_id) == "queued"


def test_reader_cannot_upload(owner: httpx.Client, member_of: Callable[..., httpx.Client]) -> None:
    image_id = create_image(owner)
    project = owner.get(f"/v2/images/{image_id}").json()["owner"]
    reader = member_of(project, "reader")
    assert upload(reader, image_id, b"abc").status_code == 403
    assert status_of(owner, image_id) == "queued"


def test_other_projects_private_image_is_not_found(
    owner: httpx.Client, member_of: Callable[..., httpx.Client], active_image: tuple[str, bytes]
) -> None:
    image_id, _ = active_image
    stranger = member_of(f"proj-other-{uuid.uuid4().hex[:6]}")
    assert stranger.get(f"/v2/images/{image_id}/file").status_code == 404
    assert stranger.head(f"/v2/images/{image_id}/file").status_code == 404
    queued = create_image(owner)
    assert upload(stranger, queued, b"abc").status_code == 404
    assert status_of(owner, queued) == "queued"


def test_upload_to_missing_image_is_not_found(owner: httpx.Client) -> None:
    assert upload(owner, str(uuid.uuid4()), b"abc").status_code == 404


# ---- download -----------------------------------------------------------------------


def test_queued_image_has_no_content(owner: httpx.Client) -> None:
    image_id = create_image(owner)
    response = owner.get(f"/v2/images/{image_id}/file")
    assert (response.status_code, response.content) == (204, b"")


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("bytes=0-99", slice(0, 100)),  # first bytes
        ("bytes=1048570-1048590", slice(1048570, 1048591)),  # across a store piece boundary
        ("bytes=2000000-", slice(2000000, None)),  # open-ended
        ("bytes=-100", slice(-100, None)),  # suffix
        ("bytes=5-999999999", slice(5, None)),  # last byte past the end: clamped
        ("bytes=-999999999", slice(0, None)),  # suffix longer than the image: everything
    ],
)
def test_range_forms(owner: httpx.Client, active_image: tuple[str, bytes], spec: str, expected: slice) -> None:
    image_id, data = active_image
    part = data[expected]
    start = expected.start if expected.start is None or expected.start >= 0 else len(data) + expected.start
    start = start or 0
    response = owner.get(f"/v2/images/{image_id}/file", headers={"Range": spec})
    assert response.status_code == 206
    assert response.content == part
    assert response.headers["content-length"] == str(len(part))
    assert response.headers["content-range"] == f"bytes {start}-{start + len(part) - 1}/{len(data)}"
    # The image's md5 is not the digest of a part, so a 206 carries none.
    assert "content-md5" not in response.headers


@pytest.mark.parametrize("spec", ["bytes=0-1,5-6", "items=0-5", "bytes=9-3", "bytes=abc", "bytes=-"])
def test_ranges_we_do_not_serve_are_ignored(owner: httpx.Client, active_image: tuple[str, bytes], spec: str) -> None:
    """RFC 9110 lets a server ignore Range; several ranges, other units and bad syntax get the whole image."""
    image_id, data = active_image
    response = owner.get(f"/v2/images/{image_id}/file", headers={"Range": spec})
    assert (response.status_code, response.content) == (200, data)


@pytest.mark.parametrize("spec", ["bytes={size}-", "bytes={size}-{size_plus}", "bytes=-0"])
def test_unsatisfiable_range(owner: httpx.Client, active_image: tuple[str, bytes], spec: str) -> None:
    """416 with ``Content-Range: bytes */size``. Deviation: Glance answers ``bytes=-0`` with the whole image."""
    image_id, data = active_image
    header = spec.format(size=len(data), size_plus=len(data) + 10)
    response = owner.get(f"/v2/images/{image_id}/file", headers={"Range": header})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(data)}"


def test_head_answers_headers_without_body(owner: httpx.Client, active_image: tuple[str, bytes]) -> None:
    image_id, data = active_image
    whole = owner.head(f"/v2/images/{image_id}/file")
    assert whole.status_code == 200
    assert whole.content == b""
    assert whole.headers["content-length"] == str(len(data))
    assert whole.headers["content-md5"] == hashlib.md5(data).hexdigest()
    assert whole.headers["accept-ranges"] == "bytes"
    part = owner.head(f"/v2/images/{image_id}/file", headers={"Range": "bytes=10-19"})
    assert (part.status_code, part.content) == (206, b"")
    assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
    assert part.headers["content-length"] == "10"


def test_deactivated_image_only_admin_downloads(
    owner: httpx.Client, admin: httpx.Client, active_image: tuple[str, bytes]
) -> None:
    data = payload(1000, 3)
    image_id = create_image(owner)
    assert upload(owner, image_id, data).status_code == 204
    assert admin.post(f"/v2/images/{image_id}/actions/deactivate").status_code == 204
    assert owner.get(f"/v2/images/{image_id}/file").status_code == 403
    response = admin.get(f"/v2/images/{image_id}/file")
    assert (response.status_code, response.content) == (200, data)
    assert admin.post(f"/v2/images/{image_id}/actions/reactivate").status_code == 204
    assert owner.get(f"/v2/images/{image_id}/file").content == data


def drop_cached_chunks(server: ServerProcess) -> None:
    for chunk in (server.data_dir / "cache" / "chunks").rglob("*"):
        if chunk.is_file():
            chunk.unlink()


def test_missing_store_object_is_an_error_not_a_short_body(
    server: ServerProcess, owner: httpx.Client
) -> None:
    image_id = create_image(owner)
    assert upload(owner, image_id, payload(5000, 4)).status_code == 204
    os.truncate(server.data_dir / "images" / image_id, 100)
    # Read in place, or (if the bytes were cached) from the store once the chunks are gone.
    drop_cached_chunks(server)
    response = owner.get(f"/v2/images/{image_id}/file")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == 503


def test_store_failure_mid_stream_drops_the_connection(
    server: ServerProcess, owner: httpx.Client
) -> None:
    """The store file shrinks after the response started: the client sees a broken transfer, not a short 200."""
    size = 16 * MiB
    image_id = create_image(owner)
    assert upload(owner, image_id, payload(size, 5)).status_code == 204
    drop_cached_chunks(server)  # so the bytes must come from the store, chunk by chunk
    token = owner.headers["X-Auth-Token"]
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)  # before connect, so it bounds the window
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(f"GET /v2/images/{image_id}/file HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {token}\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        # The server is at most a few socket buffers ahead of us: cut the file now.
        os.truncate(server.data_dir / "images" / image_id, MiB)
        got = len(body)
        while chunk := sock.recv(1024 * 1024):
            got += len(chunk)
    assert got < size


# ---- failed uploads leave nothing ----------------------------------------------------


@pytest.fixture
def capped(server_factory: Callable[..., ServerProcess]) -> tuple[ServerProcess, httpx.Client]:
    proc = server_factory(noauth=True, config={"image_size_cap": MiB})
    return proc, httpx.Client(base_url=proc.url, timeout=30)


def test_declared_length_over_cap_refused_before_reading(capped: tuple[ServerProcess, httpx.Client]) -> None:
    proc, client = capped
    with client:
        image_id = create_image(client)
        response = upload(client, image_id, payload(MiB + 1, 6))
        assert response.status_code == 413
        assert status_of(client, image_id) == "queued"
        assert stored_names(proc, image_id) == []


def test_chunked_body_over_cap(capped: tuple[ServerProcess, httpx.Client]) -> None:
    proc, client = capped
    with client:
        image_id = create_image(client)
        data = payload(MiB + 100_000, 7)
        pieces = (data[i : i + 64 * 1024] for i in range(0, len(data), 64 * 1024))
        response = client.put(f"/v2/images/{image_id}/file", content=pieces, headers=OCTET)
        assert response.status_code == 413
        assert status_of(client, image_id) == "queued"
        assert stored_names(proc, image_id) == []
        # The image can still be uploaded within the cap.
        assert upload(client, image_id, data[: MiB]).status_code == 204
        assert client.get(f"/v2/images/{image_id}/file").content == data[:MiB]


def _send_partial_upload(port: int, image_id: str, declared: int, sent: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        (
            f"PUT /v2/images/{image_id}/file HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n"
        ).encode()
        + sent
    )
    return sock


def test_client_disconnect_mid_upload(capped: tuple[ServerProcess, httpx.Client]) -> None:
    proc, client = capped
    with client:
        image_id = create_image(client)
        sock = _send_partial_upload(proc.port, image_id, 800_000, payload(400_000, 8))
        assert wait_status(client, image_id, "saving") == "saving"
        sock.close()
        assert wait_status(client, image_id, "queued") == "queued"
        assert stored_names(proc, image_id) == []
        assert upload(client, image_id, b"retry").status_code == 204


def test_image_deleted_during_upload_keeps_no_data(capped: tuple[ServerProcess, httpx.Client]) -> None:
    proc, client = capped
    with client:
        image_id = create_image(client)
        first, rest = payload(300_000, 9), payload(300_000, 10)
        with _send_partial_upload(proc.port, image_id, len(first) + len(rest), first) as sock:
            assert wait_status(client, image_id, "saving") == "saving"
            assert client.delete(f"/v2/images/{image_id}").status_code == 204
            sock.sendall(rest)
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 410")
        assert stored_names(proc, image_id) == []


# ---- admission and sending errors ----------------------------------------------------


def test_uploads_over_max_uploads_get_503_and_stay_queued(server_factory: Callable[..., ServerProcess]) -> None:
    proc = server_factory(noauth=True, config={"max_uploads": 1})
    with httpx.Client(base_url=proc.url, timeout=30) as client:
        first, second = create_image(client), create_image(client)
        head, tail = payload(200_000, 11), payload(200_000, 12)
        with _send_partial_upload(proc.port, first, len(head) + len(tail), head) as sock:
            assert wait_status(client, first, "saving") == "saving"
            refused = upload(client, second, payload(1000, 13))
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == 503
            assert int(refused.headers["Retry-After"]) > 0
            assert status_of(client, second) == "queued"
            sock.sendall(tail)
            assert sock.recv(65536).startswith(b"HTTP/1.1 204")
        # The slot is free again.
        assert upload(client, second, payload(1000, 13)).status_code == 204
        assert client.get(f"/v2/images/{first}/file").content == head + tail


def test_io_error_while_sending_is_logged_and_cuts_the_connection(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """A cached chunk that cannot be read (a directory where its file was: EISDIR) is a
    real error, not a client that went away: the log names the image, the client sees a
    broken transfer."""
    import xxhash

    chunk = 64 * 1024
    # The file store cached like a remote one: this is about a cached chunk file.
    proc = server_factory(noauth=True, config={"chunk_size": chunk, "file": {"in_place": False}})
    data = payload(4 * chunk, 14)
    with httpx.Client(base_url=proc.url, timeout=30) as client:
        image_id = create_image(client)
        assert upload(client, image_id, data).status_code == 204
        path = proc.data_dir / "cache" / "chunks"
        address = xxhash.xxh3_128_hexdigest(data[2 * chunk: 3 * chunk])
        target = path / address[:2] / address[2:]
        target.unlink()
        (target / "not-a-chunk").mkdir(parents=True)
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(f"/v2/images/{image_id}/file")
    deadline = time.monotonic() + 10
    while image_id not in proc.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    errors = [line for line in proc.log().splitlines() if image_id in line]
    assert errors and "Is a directory" in "\n".join(errors), proc.log()[-3000:]
