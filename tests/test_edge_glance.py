"""An imgproxy edge in front of the real Glance 33 (noauth, the harness's setup in
``bench/systems/glance.py``; install it with ``python -m bench setup-glance``).

What Glance sent is counted by a real nginx put between the edge and Glance (its access
log's body bytes per request), and, for an image whose data Glance reads from an http
location, by the nginx that serves that data.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from bench.servers.nginx import NginxServer
from bench.systems.glance import GlanceSystem, glance_venv, venv_ready
from tests.nginx_fixtures import NginxStore, nginx_store_factory  # noqa: F401 - fixture
from tests.server import ServerProcess
from tests.test_edge import CHUNK, OCTETS, edge_config, herd

pytestmark = pytest.mark.timeout(180)

_COUNTER = """\
        location / {{
            proxy_pass http://127.0.0.1:{port};
            proxy_set_header Host $http_host;
            proxy_http_version 1.1;
            proxy_buffering off;
            proxy_request_buffering off;
            client_max_body_size 0;
            # Glance (uWSGI) sends whole images chunked: sent unchunked, the body bytes are the image's.
            chunked_transfer_encoding off;
        }}
"""


class CountedGlance:
    """Glance behind a counting nginx: point edges at :attr:`url`."""

    def __init__(self, glance: GlanceSystem, counter: NginxServer) -> None:
        self.glance = glance
        self.counter = counter
        self.url = counter.url

    def data_bytes(self, image_id: str) -> int:
        """Image bytes Glance sent for ``image_id`` so far (200 and 206 bodies of its data; waits
        for the log to settle)."""
        last = None
        while True:
            lines = [line.split(" ") for line in self.counter.requests()
                     if line.startswith(f"GET /v2/images/{image_id}/file ")]
            now = sum(int(parts[4]) for parts in lines if parts[2] in ("200", "206"))
            if now == last:
                return now
            last = now
            time.sleep(0.3)


@pytest.fixture(scope="module")
def glance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CountedGlance]:
    if not venv_ready():
        pytest.fail(f"the Glance venv is not installed at {glance_venv()}: run `python -m bench setup-glance` "
                    "(the edge must be tested against the real Glance)")
    root = tmp_path_factory.mktemp("glance")
    system = GlanceSystem(root / "glance", processes=2).start()
    try:
        counter = NginxServer(root / "counter", _COUNTER.format(port=system.port)).start()
        try:
            yield CountedGlance(system, counter)
        finally:
            counter.stop()
    finally:
        system.stop()


def glance_client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"X-Auth-Token": "noauth"}, timeout=60)


def test_edge_in_front_of_glance(glance: CountedGlance, server_factory: Callable[..., ServerProcess]) -> None:
    edge = server_factory(config=edge_config(glance.url, edge_auth_ttl=1))
    data = os.urandom(6 * CHUNK + 321)
    with glance_client(edge.url) as c, glance_client(glance.glance.url) as direct:
        r = c.post("/v2/images", json={"name": "via-edge", "disk_format": "raw", "container_format": "bare"})
        assert r.status_code == 201, r.text
        image_id = r.json()["id"]
        assert r.headers["location"] == f"{edge.url}/v2/images/{image_id}"  # Glance's absolute link, on the edge
        pieces = (data[i:i + 100_000] for i in range(0, len(data), 100_000))
        assert c.put(f"/v2/images/{image_id}/file", content=pieces, headers=OCTETS).status_code == 204
        shown = direct.get(f"/v2/images/{image_id}").json()
        assert shown["status"] == "active" and shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
        assert c.get(f"/v2/images/{image_id}").json()["os_hash_value"] == shown["os_hash_value"]
        listed = c.get("/v2/images", params={"name": "via-edge"}).json()
        assert [i["id"] for i in listed["images"]] == [image_id]
        before = glance.data_bytes(image_id)
        outcomes = herd(edge.url, "noauth", image_id, 8)
        assert [(o.error, o.status, o.received) for o in outcomes] == [("", 200, len(data))] * 8
        assert {o.sha512 for o in outcomes} == {hashlib.sha512(data).hexdigest()}
        r = c.get(f"/v2/images/{image_id}/file", headers={"Range": "bytes=100-70000"})
        assert r.status_code == 206 and r.content == data[100:70001]
        assert glance.data_bytes(image_id) - before == len(data)  # Glance served each byte once
        assert c.delete(f"/v2/images/{image_id}").status_code == 204
        assert direct.get(f"/v2/images/{image_id}").status_code == 404
        time.sleep(1.1)  # edge_auth_ttl: then the delete reaches the data path
        assert c.get(f"/v2/images/{image_id}/file").status_code == 404


def test_glance_refusing_ranged_reads_is_read_once(
        glance: CountedGlance, server_factory: Callable[..., ServerProcess],
        nginx_store_factory: Callable[..., NginxStore]) -> None:  # noqa: F811
    """Glance's http store cannot seek: ranged reads get 400, so the edge reads the image once, whole."""
    store = nginx_store_factory()
    data = os.urandom(9 * CHUNK + 5)
    url = store.put("remote.img", data)
    validation = {"os_hash_algo": "sha512", "os_hash_value": hashlib.sha512(data).hexdigest(),
                  "checksum": hashlib.md5(data).hexdigest()}
    with glance_client(glance.glance.url) as direct:
        image_id = direct.post("/v2/images", json={"name": "remote", "disk_format": "raw",
                                                   "container_format": "bare"}).json()["id"]
        patch = [{"op": "add", "path": "/locations/-", "value": {"url": url, "metadata": {},
                                                                 "validation_data": validation}}]
        r = direct.patch(f"/v2/images/{image_id}", json=patch,
                         headers={"Content-Type": "application/openstack-images-v2.1-json-patch"})
        assert r.status_code == 200 and r.json()["status"] == "active", r.text
        refused = direct.get(f"/v2/images/{image_id}/file", headers={"Range": "bytes=0-99"})
        assert refused.status_code == 400 and "randomly" in refused.text
    edge = server_factory(config=edge_config(glance.url))
    outcomes = herd(edge.url, "noauth", image_id, 8)
    assert [(o.error, o.status, o.received) for o in outcomes] == [("", 200, len(data))] * 8
    assert {o.sha512 for o in outcomes} == {hashlib.sha512(data).hexdigest()}
    with glance_client(edge.url) as c:
        r = c.get(f"/v2/images/{image_id}/file", headers={"Range": f"bytes={CHUNK}-{2 * CHUNK}"})
        assert r.status_code == 206 and r.content == data[CHUNK:2 * CHUNK + 1]
    assert glance.data_bytes(image_id) == len(data)
    with httpx.Client(base_url=edge.url, headers={"X-Auth-Token": edge.admin_token}) as admin:
        assert admin.get("/v2/cache/stats").json()["edge"]["sequential_reads"] == 1


