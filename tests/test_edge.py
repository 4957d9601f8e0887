"""Edge mode against real servers on loopback: an imgproxy edge in front of a central imgproxy
(and of another edge), plus fault injection through :mod:`tests.fake_image_api`.

What a compute node sees on the edge is what it would see on the central service (same
ids, answers and tokens); what the central service sees is one read of each image.
The real Glance as the upstream is in ``test_edge_glance.py``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cache_http import wait_for
from tests.fake_image_api import FakeImageApi, fake_image_api  # noqa: F401 - fixture
from tests.server import ServerProcess, free_port
from tests.test_herd import Outcome, download

pytestmark = pytest.mark.timeout(120)

CHUNK = 64 * 1024
SIZE = 5 * CHUNK + 1234
OCTETS = {"Content-Type": "application/octet-stream"}


def edge_config(upstream: str, **extra: Any) -> dict[str, Any]:
    return {"chunk_size": CHUNK, "upstream_api": upstream, "prefetch_interval": 0.5, **extra}


@pytest.fixture
def central(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory(config={"chunk_size": CHUNK, "image_size_cap": 64 * 1024 * 1024})


def client(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"X-Auth-Token": token}, timeout=30)


def upload_image(c: httpx.Client, data: bytes, **fields: Any) -> str:
    r = c.post("/v2/images", json={"disk_format": "raw", "container_format": "bare", **fields})
    assert r.status_code == 201, r.text
    image_id = str(r.json()["id"])
    assert c.put(f"/v2/images/{image_id}/file", content=data, headers=OCTETS).status_code == 204
    return image_id


def bytes_served(server: ServerProcess, token: str) -> int:
    """What the imgproxy ``server`` has sent of image data so far (its cache stats)."""
    with client(server.url, token) as c:
        return int(c.get("/v2/cache/stats").json()["bytes_served"])


def herd(url: str, token: str, image_id: str, n: int) -> list[Outcome]:
    outcomes = [Outcome() for _ in range(n)]
    go = threading.Event()
    threads = [threading.Thread(target=download, args=(url, token, image_id, out, go)) for out in outcomes]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(90)
    return outcomes


def member_token(server: ServerProcess, project: str, role: str = "member") -> str:
    from imgproxy.tokens import create_token

    token = create_token(server.data_dir / "tokens.json", project=project, roles=[role])
    deadline = time.monotonic() + 10
    while httpx.get(server.url + "/v2/schemas/member", headers={"X-Auth-Token": token}).status_code == 401:
        assert time.monotonic() < deadline, "the server did not pick up the new token"
        time.sleep(0.05)
    return token


# ---- requests other than data reads go upstream, unchanged ----------------------------------


def test_metadata_requests_go_upstream_unchanged(central: ServerProcess,
                                                 server_factory: Callable[..., ServerProcess]) -> None:
    edge = server_factory(config=edge_config(central.url))
    token = central.admin_token
    data = os.urandom(SIZE)
    with client(edge.url, token) as via_edge, client(central.url, token) as direct:
        r = via_edge.post("/v2/images", json={"name": "edge-proxy", "disk_format": "raw",
                                              "container_format": "bare", "tags": ["t1"]})
        assert r.status_code == 201, r.text
        image_id = r.json()["id"]
        assert r.headers["location"] == f"/v2/images/{image_id}"  # a path: it works on the edge
        # The upload streams through the edge (a generator body: no length known up front).
        pieces = (data[i:i + 50_000] for i in range(0, SIZE, 50_000))
        assert via_edge.put(f"/v2/images/{image_id}/file", content=pieces, headers=OCTETS).status_code == 204
        shown = direct.get(f"/v2/images/{image_id}").json()
        assert shown["status"] == "active" and shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
        # Same answers, byte for byte, from the edge and from the central service.
        for path in (f"/v2/images/{image_id}", "/v2/schemas/image", f"/v2/images/{uuid.uuid4()}"):
            a, b = via_edge.get(path), direct.get(path)
            assert (a.status_code, a.content) == (b.status_code, b.content), path
        patch = [{"op": "replace", "path": "/name", "value": "renamed"}]
        r = via_edge.patch(f"/v2/images/{image_id}", json=patch,
                           headers={"Content-Type": "application/openstack-images-v2.1-json-patch"})
        assert r.status_code == 200 and r.json()["name"] == "renamed"
        assert via_edge.put(f"/v2/images/{image_id}/tags/t2").status_code == 204
        assert set(direct.get(f"/v2/images/{image_id}").json()["tags"]) == {"t1", "t2"}
        # Paging: the next link is a path that works on the edge.
        upload_image(direct, b"x", name="edge-proxy")
        first = via_edge.get("/v2/images", params={"name": "edge-proxy", "limit": 1}).json()
        assert first["next"].startswith("/v2/images?")
        second = via_edge.get(first["next"]).json()
        assert [i["id"] for i in first["images"]] != [i["id"] for i in second["images"]]
        # The caller's token decides upstream, not the edge.
        bad = via_edge.get(f"/v2/images/{image_id}", headers={"X-Auth-Token": "not-a-token"})
        assert bad.status_code == 401 and bad.json() == direct.get(
            f"/v2/images/{image_id}", headers={"X-Auth-Token": "not-a-token"}).json()
        assert via_edge.delete(f"/v2/images/{image_id}").status_code == 204
        assert direct.get(f"/v2/images/{image_id}").status_code == 404


# ---- data reads: authorized upstream, served from the cache, read upstream once --------------


def test_data_is_authorized_upstream_and_read_upstream_once(
        central: ServerProcess, server_factory: Callable[..., ServerProcess]) -> None:
    edge = server_factory(config=edge_config(central.url, edge_auth_ttl=0.5))
    owner, other = member_token(central, "team-a"), member_token(central, "team-b")
    data = os.urandom(SIZE)
    with client(central.url, owner) as direct:
        image_id = upload_image(direct, data, name="private", visibility="private")
    before = bytes_served(central, central.admin_token)
    with client(edge.url, owner) as c:
        r = c.get(f"/v2/images/{image_id}/file")
        assert r.status_code == 200 and r.content == data
        assert r.headers["content-md5"] == hashlib.md5(data).hexdigest()
        r = c.get(f"/v2/images/{image_id}/file", headers={"Range": f"bytes={CHUNK - 10}-{3 * CHUNK}"})
        assert r.status_code == 206 and r.content == data[CHUNK - 10:3 * CHUNK + 1]
        assert r.headers["content-range"] == f"bytes {CHUNK - 10}-{3 * CHUNK}/{SIZE}"
        head = c.head(f"/v2/images/{image_id}/file")
        assert head.status_code == 200 and head.headers["content-length"] == str(SIZE)
        assert c.get(f"/v2/images/{image_id}/file", headers={"Range": f"bytes={SIZE}-"}).status_code == 416
    assert bytes_served(central, central.admin_token) - before == SIZE  # the rest came from the cache
    # Another project's token: the upstream's 404 comes back as it is, cached bytes or not.
    with client(edge.url, other) as c, client(central.url, other) as direct:
        a, b = c.get(f"/v2/images/{image_id}/file"), direct.get(f"/v2/images/{image_id}")
        assert (a.status_code, a.json()) == (404, b.json())
    assert httpx.get(f"{edge.url}/v2/images/{image_id}/file").status_code == 401  # no token at all
    # Deactivated upstream: refused to members within edge_auth_ttl; deleted: 404.
    with client(central.url, central.admin_token) as admin:
        assert admin.post(f"/v2/images/{image_id}/actions/deactivate").status_code == 204
        time.sleep(0.6)
        with client(edge.url, owner) as c:
            assert c.get(f"/v2/images/{image_id}/file").status_code == 403
        assert admin.post(f"/v2/images/{image_id}/actions/reactivate").status_code == 204
        assert admin.delete(f"/v2/images/{image_id}").status_code == 204
        time.sleep(0.6)
        with client(edge.url, owner) as c:
            assert c.get(f"/v2/images/{image_id}/file").status_code == 404


def test_boot_storm_on_an_edge_reads_each_image_once(central: ServerProcess,
                                                     server_factory: Callable[..., ServerProcess]) -> None:
    edge = server_factory(config=edge_config(central.url))
    token = central.admin_token
    data = os.urandom(8 * CHUNK + 99)
    with client(central.url, token) as direct:
        image_id = upload_image(direct, data, name="storm")
    before = bytes_served(central, token)
    outcomes = herd(edge.url, token, image_id, 8)
    assert [(o.error, o.status, o.received) for o in outcomes] == [("", 200, len(data))] * 8
    assert {o.sha512 for o in outcomes} == {hashlib.sha512(data).hexdigest()}
    assert bytes_served(central, token) - before == len(data)


def test_chained_edges(central: ServerProcess, server_factory: Callable[..., ServerProcess]) -> None:
    site = server_factory(config=edge_config(central.url))
    rack = server_factory(config=edge_config(site.url))
    token = member_token(central, "team-c")
    data = os.urandom(6 * CHUNK + 7)
    with client(central.url, token) as direct:
        image_id = upload_image(direct, data, name="chained", visibility="private")
    before = bytes_served(central, central.admin_token)
    outcomes = herd(rack.url, token, image_id, 4)
    assert [(o.error, o.status, o.received) for o in outcomes] == [("", 200, len(data))] * 4
    assert {o.sha512 for o in outcomes} == {hashlib.sha512(data).hexdigest()}
    with client(rack.url, token) as c:
        r = c.get(f"/v2/images/{image_id}/file", headers={"Range": "bytes=-100"})
        assert r.status_code == 206 and r.content == data[-100:]
        assert c.get(f"/v2/images/{image_id}").json()["id"] == image_id  # metadata: two hops up
    with client(rack.url, member_token(central, "team-d")) as stranger:
        assert stranger.get(f"/v2/images/{image_id}/file").status_code == 404
    assert bytes_served(central, central.admin_token) - before == len(data)


# ---- the edge's own cache API, and prefetching with the edge's upstream token -----------------


def test_cache_api_needs_the_edges_token_and_prefetch_uses_upstream_token(
        central: ServerProcess, server_factory: Callable[..., ServerProcess]) -> None:
    reader = member_token(central, "team-e")
    edge = server_factory(config=edge_config(central.url, upstream_token=central.admin_token))
    data = os.urandom(4 * CHUNK + 5)
    with client(central.url, reader) as direct:
        image_id = upload_image(direct, data, name="prefetched", visibility="private")
    with client(edge.url, central.admin_token) as c:
        r = c.get("/v2/cache")  # the central's admin token means nothing to the edge's cache API
        assert r.status_code == 401
    before = bytes_served(central, central.admin_token)
    with client(edge.url, edge.admin_token) as admin:
        assert admin.put(f"/v2/cache/{uuid.uuid4()}").status_code == 404
        assert admin.put(f"/v2/cache/{image_id}").status_code == 202
        deadline = time.monotonic() + 20
        while not any(row["image_id"] == image_id for row in admin.get("/v2/cache").json()["cached_images"]):
            assert time.monotonic() < deadline, "the prefetcher did not cache the image"
            time.sleep(0.1)
        assert admin.get("/v2/cache").json()["queued_images"] == []
    assert bytes_served(central, central.admin_token) - before == len(data)
    # Cached, but still only for callers the upstream authorizes.
    with client(edge.url, member_token(central, "team-f")) as stranger:
        assert stranger.get(f"/v2/images/{image_id}/file").status_code == 404
    with client(edge.url, reader) as c:
        assert c.get(f"/v2/images/{image_id}/file").content == data
    assert bytes_served(central, central.admin_token) - before == len(data)
    with client(edge.url, edge.admin_token) as admin:
        assert admin.delete(f"/v2/cache/{image_id}").status_code == 204
        assert admin.get("/v2/cache").json()["cached_images"] == []


# ---- failures (fault injection: no real server misbehaves on demand) -------------------------


def _edge_on(fake: FakeImageApi, server_factory: Callable[..., ServerProcess], **extra: Any) -> ServerProcess:
    return server_factory(config=edge_config(fake.url, upstream_timeout=1.0, upstream_retries=2, **extra))


def test_wrong_bytes_cut_the_connection_and_stay_uncached(
        fake_image_api: FakeImageApi, server_factory: Callable[..., ServerProcess]) -> None:  # noqa: F811
    edge = _edge_on(fake_image_api, server_factory)
    image_id, data = str(uuid.uuid4()), os.urandom(SIZE)
    fake_image_api.add(image_id, data, "corrupt")
    for headers in ({}, {"Range": "bytes=0-99"}):
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(f"{edge.url}/v2/images/{image_id}/file", headers=headers, timeout=30)
    with client(edge.url, edge.admin_token) as admin:
        assert admin.get("/v2/cache/stats").json()["edge"]["verify_mismatches"] >= 1
        # The wrong chunks go once the fills still in flight have landed (every response that
        # could have carried them was cut at its last byte).
        assert wait_for(lambda: admin.get("/v2/cache").json()["cached_images"] == []
                        and admin.get("/v2/cache/stats").json()["bytes_cached"] == 0)


def test_stalled_upstream_is_retried_from_the_last_byte(
        fake_image_api: FakeImageApi, server_factory: Callable[..., ServerProcess]) -> None:  # noqa: F811
    edge = _edge_on(fake_image_api, server_factory, readahead_chunks=0)
    image_id, data = str(uuid.uuid4()), os.urandom(SIZE)
    fake_image_api.add(image_id, data, "stall")
    r = httpx.get(f"{edge.url}/v2/images/{image_id}/file", timeout=30)
    assert r.status_code == 200 and r.content == data
    reads = fake_image_api.data_reads(image_id)
    # The first chunk's read stalled half way; its retry asked for the rest only.
    assert reads[:2] == [f"bytes=0-{CHUNK - 1}", f"bytes={CHUNK // 2}-{CHUNK - 1}"]


def test_failing_upstream_gets_bounded_retries_then_503(
        fake_image_api: FakeImageApi, server_factory: Callable[..., ServerProcess]) -> None:  # noqa: F811
    edge = _edge_on(fake_image_api, server_factory)
    image_id = str(uuid.uuid4())
    fake_image_api.add(image_id, os.urandom(SIZE), "503")
    r = httpx.get(f"{edge.url}/v2/images/{image_id}/file", timeout=30)
    assert r.status_code == 503
    assert fake_image_api.url in r.json()["error"]["message"]
    # The chunk the reader asked for was tried 1 + upstream_retries times; those read ahead at
    # most as often (they are cancelled once the reader that wanted them has gone).
    reads = Counter(fake_image_api.data_reads(image_id))
    assert reads[f"bytes=0-{CHUNK - 1}"] == 3 and all(1 <= n <= 3 for n in reads.values())
    # Nothing listens upstream: the authorization cannot be asked, nor anything proxied.
    nowhere = f"http://127.0.0.1:{free_port()}"
    edge = server_factory(config=edge_config(nowhere, upstream_retries=1))
    for path in (f"/v2/images/{uuid.uuid4()}/file", "/v2/images"):
        r = httpx.get(edge.url + path, timeout=30)
        assert r.status_code == 503 and nowhere in r.json()["error"]["message"], path


def test_upstream_ignoring_range_is_read_once_for_all_readers(
        fake_image_api: FakeImageApi, server_factory: Callable[..., ServerProcess]) -> None:  # noqa: F811
    edge = _edge_on(fake_image_api, server_factory)
    image_id, data = str(uuid.uuid4()), os.urandom(8 * CHUNK + 3)
    fake_image_api.add(image_id, data, "norange")
    outcomes = herd(edge.url, "any", image_id, 8)
    assert [(o.error, o.status, o.received) for o in outcomes] == [("", 200, len(data))] * 8
    assert {o.sha512 for o in outcomes} == {hashlib.sha512(data).hexdigest()}
    assert fake_image_api.body_bytes == len(data)
    assert len(fake_image_api.data_reads(image_id)) == 1


def test_upstream_api_must_be_an_http_url(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGPROXY_")}
    done = subprocess.run([sys.executable, "-m", "imgproxy", "serve", "--data-dir", str(tmp_path),
                           "--upstream-api", "central:9292"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2
    assert "upstream_api" in done.stderr and "http(s) URL" in done.stderr
