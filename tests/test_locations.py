"""Glance's locations API and http-store images, against a real imgproxy and a real nginx.

Counting what nginx sent (its access log, body bytes) shows what the service read
upstream: each byte once, and nothing more once an image is cached.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.nginx_fixtures import NginxStore, nginx_store, nginx_store_factory  # noqa: F401 - fixtures
from tests.server import ServerProcess

pytestmark = pytest.mark.timeout(90)

CHUNK = 64 * 1024
# nginx's limit_rate lets a request send its first second's worth at once, so a rate
# of half a chunk per second makes each chunk's ranged read take about one second.
SLOW = "32k"


# ---- helpers (test_herd uses them too) ------------------------------------------------


def digests(data: bytes) -> dict[str, str]:
    return {"checksum": hashlib.md5(data).hexdigest(), "os_hash_algo": "sha512",
            "os_hash_value": hashlib.sha512(data).hexdigest()}


def new_image(client: httpx.Client, **fields: Any) -> str:
    r = client.post("/v2/images", json={"disk_format": "raw", "container_format": "bare", **fields})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def add_location(client: httpx.Client, image_id: str, url: str, validation: dict[str, str] | None = None) -> httpx.Response:
    body: dict[str, Any] = {"url": url}
    if validation is not None:
        body["validation_data"] = validation
    return client.post(f"/v2/images/{image_id}/locations", json=body)


def wait_status(client: httpx.Client, image_id: str, wanted: str, timeout: float = 15.0) -> dict[str, Any]:
    """Poll the image until its status is ``wanted``; fail with the last record otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        image: dict[str, Any] = client.get(f"/v2/images/{image_id}").json()
        if image["status"] == wanted or time.monotonic() > deadline:
            assert image["status"] == wanted, image
            return image
        time.sleep(0.05)


def body_bytes(store: NginxStore) -> int:
    """Body bytes nginx sent so far; waits until the access log stops growing (nginx
    logs a request just after its last byte leaves, possibly after the client read it)."""
    last = -1
    while True:
        now = store.server.bytes_sent()
        lines = len(store.log_lines())
        if (now, lines) == last:
            return now
        last = (now, lines)  # type: ignore[assignment]
        time.sleep(0.2)


def read_cut(client: httpx.Client, image_id: str, data: bytes) -> bytes:
    """GET the image's data and expect the connection to be cut before the body completes;
    return what arrived (a strict prefix of ``data``: the last byte was held back)."""
    got = bytearray()
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("GET", f"/v2/images/{image_id}/file") as r:
            assert r.status_code == 200
            for piece in r.iter_bytes():
                got += piece
    assert len(got) < len(data) and data.startswith(got)
    return bytes(got)


def start_server(data_dir: Path, **kwargs: Any) -> ServerProcess:
    config = {"chunk_size": CHUNK, "image_size_cap": 64 * 1024 * 1024, **kwargs.pop("config", {})}
    return ServerProcess(data_dir, config=config, **kwargs).start()


# ---- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path_factory.mktemp("locations") / "data")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def admin_c(srv: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, headers={"X-Auth-Token": srv.admin_token}, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def member_c(srv: ServerProcess) -> Iterator[httpx.Client]:
    from imgproxy.tokens import create_token

    token = create_token(srv.data_dir / "tokens.json", project="proj-member", roles=["member"])
    with httpx.Client(base_url=srv.url, headers={"X-Auth-Token": token}, timeout=30) as c:
        deadline = time.monotonic() + 10
        while c.get("/v2/schemas/member").status_code == 401 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield c


# ---- registering a location -----------------------------------------------------------


def test_without_validation_data_digests_in_background(admin_c: httpx.Client, nginx_store: NginxStore) -> None:
    data = os.urandom(5 * CHUNK + 1234)
    url = nginx_store.put("plain.img", data)
    image_id = new_image(admin_c, name="plain")
    before = body_bytes(nginx_store)

    r = add_location(admin_c, image_id, url)
    assert r.status_code == 202 and r.content == b""
    assert admin_c.get(f"/v2/images/{image_id}").json()["status"] in ("saving", "active")
    # Not queued any more: an upload is refused whether the pass is still running or done.
    put = admin_c.put(f"/v2/images/{image_id}/file", content=b"x", headers={"Content-Type": "application/octet-stream"})
    assert put.status_code == 409

    image = wait_status(admin_c, image_id, "active")
    assert image["size"] == len(data)
    assert {k: image[k] for k in ("checksum", "os_hash_algo", "os_hash_value")} == digests(data)
    assert "locations" not in image and not any(k.startswith("_") for k in image)
    r = admin_c.get(f"/v2/images/{image_id}/locations")
    assert r.status_code == 200 and r.json() == [{"url": url, "metadata": {}}]
    assert body_bytes(nginx_store) - before == len(data)  # the pass read each byte once

    # The pass filled the cache: downloads read nothing more from nginx.
    after_pass = body_bytes(nginx_store)
    got = admin_c.get(f"/v2/images/{image_id}/file")
    assert got.status_code == 200 and got.content == data
    assert got.headers["Content-MD5"] == hashlib.md5(data).hexdigest()
    part = admin_c.get(f"/v2/images/{image_id}/file", headers={"Range": "bytes=70000-200000"})
    assert part.status_code == 206 and part.content == data[70000:200001]
    assert body_bytes(nginx_store) == after_pass


def test_with_validation_data_active_at_once(admin_c: httpx.Client, nginx_store: NginxStore) -> None:
    data = os.urandom(3 * CHUNK + 7)
    url = nginx_store.put("validated.img", data)
    image_id = new_image(admin_c)
    before = body_bytes(nginx_store)

    assert add_location(admin_c, image_id, url, digests(data)).status_code == 202
    image = admin_c.get(f"/v2/images/{image_id}").json()
    assert image["status"] == "active" and image["size"] == len(data)
    assert {k: image[k] for k in ("checksum", "os_hash_algo", "os_hash_value")} == digests(data)
    got = admin_c.get(f"/v2/images/{image_id}/file")
    assert got.status_code == 200 and got.content == data
    # The verify pass and the download shared one upstream read.
    assert body_bytes(nginx_store) - before == len(data)
    assert admin_c.get(f"/v2/images/{image_id}").json()["status"] == "active"


def test_validation_without_checksum_gets_it_from_the_verify_pass(admin_c: httpx.Client, nginx_store: NginxStore) -> None:
    data = os.urandom(2 * CHUNK)
    url = nginx_store.put("nomd5.img", data)
    image_id = new_image(admin_c)
    validation = digests(data)
    del validation["checksum"]
    assert add_location(admin_c, image_id, url, validation).status_code == 202
    assert admin_c.get(f"/v2/images/{image_id}").json()["status"] == "active"
    assert admin_c.get(f"/v2/images/{image_id}/file").content == data  # the first full read verifies
    deadline = time.monotonic() + 15
    while admin_c.get(f"/v2/images/{image_id}").json()["checksum"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert admin_c.get(f"/v2/images/{image_id}").json()["checksum"] == hashlib.md5(data).hexdigest()


@pytest.mark.parametrize("wrong", ["os_hash_value", "checksum"])
def test_wrong_validation_data_kills_the_image(admin_c: httpx.Client, nginx_store: NginxStore, wrong: str) -> None:
    data = os.urandom(2 * CHUNK + 5)
    url = nginx_store.put(f"liar-{wrong}.img", data)
    image_id = new_image(admin_c)
    validation = digests(data)
    validation[wrong] = digests(b"other bytes")[wrong]
    assert add_location(admin_c, image_id, url, validation).status_code == 202
    # The first full read verifies in line: its client gets the bytes as they come, but
    # never the last one of wrong data; the connection is cut instead.
    read_cut(admin_c, image_id, data)
    wait_status(admin_c, image_id, "killed")
    # A killed image has no data to serve (Glance: 204) and no location left.
    r = admin_c.get(f"/v2/images/{image_id}/file")
    assert r.status_code == 204 and r.content == b""
    assert admin_c.get(f"/v2/images/{image_id}/locations").json() == []
    assert admin_c.delete(f"/v2/images/{image_id}").status_code == 204


@pytest.mark.parametrize("right", [True, False], ids=["right", "wrong"])
def test_concurrent_full_reads_wait_for_the_verdict(
    admin_c: httpx.Client, nginx_store_factory: Callable[..., NginxStore], right: bool
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    slow = nginx_store_factory(limit_rate=SLOW)  # the reads overlap: one verifies, the others wait
    data = os.urandom(4 * CHUNK + 11)
    url = slow.put("together.img", data)
    image_id = new_image(admin_c)
    validation = digests(data if right else b"something else")
    assert add_location(admin_c, image_id, url, validation).status_code == 202

    def read(_: int) -> bytes:
        if not right:
            return read_cut(admin_c, image_id, data)
        got = admin_c.get(f"/v2/images/{image_id}/file")
        assert got.status_code == 200
        return got.content

    with ThreadPoolExecutor(3) as pool:
        bodies = list(pool.map(read, range(3)))
    if right:
        assert bodies == [data] * 3
        assert admin_c.get(f"/v2/images/{image_id}").json()["status"] == "active"
    else:
        wait_status(admin_c, image_id, "killed")


def test_range_on_a_cold_image_fills_only_its_chunks(admin_c: httpx.Client, nginx_store: NginxStore) -> None:
    data = os.urandom(6 * CHUNK + 99)
    url = nginx_store.put("ranged.img", data)
    image_id = new_image(admin_c)
    seen = len(nginx_store.log_lines())
    before = body_bytes(nginx_store)
    assert add_location(admin_c, image_id, url, digests(data)).status_code == 202
    wait_status(admin_c, image_id, "active")

    r = admin_c.get(f"/v2/images/{image_id}/file", headers={"Range": f"bytes={CHUNK + 10}-{3 * CHUNK - 1}"})
    assert r.status_code == 206 and r.content == data[CHUNK + 10:3 * CHUNK]
    time.sleep(0.5)  # room for any read that should not happen
    new = [line for line in nginx_store.log_lines()[seen:] if line.startswith("GET ")]
    # Only the two chunks the range overlaps: a range does not start the verify pass.
    assert sorted(line.split('"')[1] for line in new) == sorted([
        f"bytes={CHUNK}-{2 * CHUNK - 1}", f"bytes={2 * CHUNK}-{3 * CHUNK - 1}"
    ]), new
    assert all(" 206 " in line for line in new)
    assert body_bytes(nginx_store) - before == 2 * CHUNK

    # A full read fetches the rest once, and verifies the image on the way.
    assert admin_c.get(f"/v2/images/{image_id}/file").content == data
    assert body_bytes(nginx_store) - before == len(data)
    assert admin_c.get(f"/v2/images/{image_id}").json()["status"] == "active"

def test_only_admins(admin_c: httpx.Client, member_c: httpx.Client, nginx_store: NginxStore) -> None:
    url = nginx_store.put("member.img", b"m" * 100)
    own = new_image(member_c)
    assert add_location(member_c, own, url).status_code == 403
    assert member_c.get(f"/v2/images/{own}/locations").status_code == 403
    assert member_c.get(f"/v2/images/{own}").json()["status"] == "queued"
    # Someone else's private image is not there at all for a member.
    private = new_image(admin_c, visibility="private")
    assert add_location(member_c, private, url).status_code == 404
    assert member_c.get(f"/v2/images/{private}/locations").status_code == 404
    missing = "0c1d2e3f-0000-4000-8000-000000000000"
    assert add_location(admin_c, missing, url).status_code == 404
    assert admin_c.get(f"/v2/images/{missing}/locations").status_code == 404
    assert admin_c.get(f"/v2/images/{own}/locations").json() == []


def test_image_must_be_queued(admin_c: httpx.Client, nginx_store: NginxStore) -> None:
    data = b"d" * 1000
    url = nginx_store.put("twice.img", data)
    image_id = new_image(admin_c)
    assert add_location(admin_c, image_id, url, digests(data)).status_code == 202
    assert add_location(admin_c, image_id, url, digests(data)).status_code == 409
    uploaded = new_image(admin_c)
    r = admin_c.put(f"/v2/images/{uploaded}/file", content=data, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 204
    assert add_location(admin_c, uploaded, url).status_code == 409


@pytest.mark.parametrize(
    "body",
    [
        {"url": "file:///etc/passwd"},
        {"url": "FILE:///etc/passwd"},
        {"url": "ftp://127.0.0.1/x.img"},
        {"url": "no-scheme"},
        {"url": ""},
        {"url": 5},
        {},
        {"url": "http://127.0.0.1/x", "extra": 1},
        {"url": "http://127.0.0.1/x", "validation_data": {"os_hash_algo": "md5", "os_hash_value": "0" * 32}},
        {"url": "http://127.0.0.1/x", "validation_data": {"os_hash_algo": "sha512", "os_hash_value": "g" * 128}},
        {"url": "http://127.0.0.1/x", "validation_data": {"os_hash_algo": "sha512", "os_hash_value": "0" * 127}},
        {"url": "http://127.0.0.1/x", "validation_data": {"os_hash_algo": "sha512"}},
        {"url": "http://127.0.0.1/x", "validation_data": {"os_hash_value": "0" * 128}},
        {"url": "http://127.0.0.1/x",
         "validation_data": {"os_hash_algo": "sha512", "os_hash_value": "0" * 128, "checksum": "0" * 31}},
        {"url": "http://127.0.0.1/x",
         "validation_data": {"os_hash_algo": "sha512", "os_hash_value": "0" * 128, "size": 3}},
        {"url": "http://127.0.0.1/x", "validation_data": "sha512"},
    ],
)
def test_bad_requests(admin_c: httpx.Client, body: dict[str, Any]) -> None:
    image_id = new_image(admin_c)
    r = admin_c.post(f"/v2/images/{image_id}/locations", json=body)
    assert r.status_code == 400, r.text
    assert admin_c.get(f"/v2/images/{image_id}").json()["status"] == "queued"


def test_not_a_json_object(admin_c: httpx.Client) -> None:
    image_id = new_image(admin_c)
    assert admin_c.post(f"/v2/images/{image_id}/locations", json=["http://x"]).status_code == 400
    assert admin_c.post(f"/v2/images/{image_id}/locations", content=b"{nope").status_code == 400


def test_upstream_missing_or_unreachable(admin_c: httpx.Client, nginx_store: NginxStore) -> None:
    from tests.server import free_port

    image_id = new_image(admin_c)
    for url in (nginx_store.url("no-such.img"), f"http://127.0.0.1:{free_port()}/x.img"):
        r = add_location(admin_c, image_id, url)
        assert r.status_code == 400, r.text
        assert "location" in r.text
    image = admin_c.get(f"/v2/images/{image_id}").json()
    assert image["status"] == "queued" and image["size"] is None
    assert admin_c.get(f"/v2/images/{image_id}/locations").json() == []


# ---- the background pass: upstream failure, restart -----------------------------------


def test_upstream_lost_during_digest_pass_requeues(admin_c: httpx.Client, nginx_store_factory: Callable[..., NginxStore]) -> None:
    slow = nginx_store_factory(limit_rate=SLOW)
    data = os.urandom(8 * CHUNK)
    url = slow.put("vanishing.img", data)
    image_id = new_image(admin_c)
    assert add_location(admin_c, image_id, url).status_code == 202
    (slow.root / "vanishing.img").unlink()  # the chunk being read completes; the next ones 404
    image = wait_status(admin_c, image_id, "queued", timeout=30)
    assert image["size"] is None and image["checksum"] is None
    assert admin_c.get(f"/v2/images/{image_id}/locations").json() == []
    # Queued again: it can take another location (or an upload).
    url = slow.put("back.img", data[:1000])
    assert add_location(admin_c, image_id, url, digests(data[:1000])).status_code == 202


def test_digest_pass_resumes_after_restart(tmp_path: Path, nginx_store_factory: Callable[..., NginxStore]) -> None:
    slow = nginx_store_factory(limit_rate=SLOW)
    data = os.urandom(8 * CHUNK)  # about 4 s to read at SLOW
    url = slow.put("restart.img", data)
    proc = start_server(tmp_path / "data")
    try:
        with httpx.Client(base_url=proc.url, headers={"X-Auth-Token": proc.admin_token}, timeout=30) as c:
            image_id = new_image(c)
            assert add_location(c, image_id, url).status_code == 202
            while slow.server.bytes_sent() == 0:  # the pass has begun reading
                time.sleep(0.05)
            assert c.get(f"/v2/images/{image_id}").json()["status"] == "saving"
        assert proc.stop() == 0
        proc.start()
        with httpx.Client(base_url=proc.url, headers={"X-Auth-Token": proc.admin_token}, timeout=30) as c:
            image = wait_status(c, image_id, "active", timeout=60)
            assert {k: image[k] for k in ("checksum", "os_hash_algo", "os_hash_value")} == digests(data)
            assert c.get(f"/v2/images/{image_id}/file").content == data
    finally:
        proc.stop()


def test_owed_verify_pass_waits_for_a_full_read_across_restarts(
    tmp_path: Path, nginx_store_factory: Callable[..., NginxStore]
) -> None:
    store = nginx_store_factory()
    data = os.urandom(2 * CHUNK + 3)
    url = store.put("later.img", data)
    proc = start_server(tmp_path / "data")
    try:
        with httpx.Client(base_url=proc.url, headers={"X-Auth-Token": proc.admin_token}, timeout=30) as c:
            image_id = new_image(c)
            validation = digests(data)
            validation["os_hash_value"] = digests(b"not these bytes")["os_hash_value"]
            assert add_location(c, image_id, url, validation).status_code == 202
        assert proc.stop() == 0
        proc.start()
        with httpx.Client(base_url=proc.url, headers={"X-Auth-Token": proc.admin_token}, timeout=30) as c:
            time.sleep(0.5)  # room for a pass that should not start on its own
            assert c.get(f"/v2/images/{image_id}").json()["status"] == "active"
            assert body_bytes(store) == 0  # nothing read the image yet
            read_cut(c, image_id, data)
            wait_status(c, image_id, "killed")
    finally:
        proc.stop()
