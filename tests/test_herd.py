"""The headline guarantee: a herd of cold downloads reads each upstream byte once.

Sixteen clients download an image, just registered by URL, whose bytes sit on a
throttled nginx (each 64 KiB chunk takes about a second to arrive). nginx's access
log shows what was read upstream; each client hashes what it received. The verify
pass the registration started shares the same fills.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest

from tests.nginx_fixtures import NginxStore, nginx_store_factory  # noqa: F401 - fixture
from tests.server import ServerProcess
from tests.test_locations import CHUNK, SLOW, add_location, body_bytes, digests, new_image

pytestmark = pytest.mark.timeout(120)

CLIENTS = 16
SIZE = 8 * CHUNK + 321  # nine chunks: about 4-5 s to fill at SLOW


@dataclass
class Outcome:
    status: int = 0
    sha512: str = ""
    received: int = 0
    first_byte: float = 0.0
    done: float = 0.0
    error: str = ""


def download(base_url: str, token: str, image_id: str, out: Outcome, go: threading.Event, stop_after: int | None = None) -> None:
    """GET the image with a raw connection, reading (and hashing) it incrementally.

    With ``stop_after``, hang up once that many bytes have arrived.
    """
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        go.wait()
        conn.request("GET", f"/v2/images/{image_id}/file", headers={"X-Auth-Token": token})
        response = conn.getresponse()
        out.status = response.status
        sha = hashlib.sha512()
        while True:
            piece = response.read1(16 * 1024)
            if not piece:
                break
            if not out.received:
                out.first_byte = time.monotonic()
            out.received += len(piece)
            sha.update(piece)
            if stop_after is not None and out.received >= stop_after:
                break
        out.sha512 = sha.hexdigest()
        out.done = time.monotonic()
    except Exception as exc:  # reported by the test, with the client's number
        out.error = repr(exc)
    finally:
        conn.close()


def wait_cached_then_evict(admin: httpx.Client, image_id: str, size: int = SIZE) -> None:
    """Prefetch the image (its verify pass rides along), wait until it is cached whole, then
    evict it: cold again, but with every chunk address known."""
    assert admin.put(f"/v2/cache/{image_id}").status_code == 202
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = admin.get("/v2/cache").json()
        entries = [e for e in state.get("cached_images", []) if e["image_id"] == image_id]
        if entries and entries[0]["size"] == size and image_id not in state.get("queued_images", []):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the prefetch did not cache the image")
    # The verify pass that rode along may still be reading the image, refilling chunks the
    # eviction took: evict until nothing of it is left (this cache holds nothing else).
    while time.monotonic() < deadline:
        assert admin.delete(f"/v2/cache/{image_id}").status_code == 204
        time.sleep(0.2)
        if admin.get("/v2/cache/stats").json()["bytes_cached"] == 0:
            return
    pytest.fail("the image stayed cached after its eviction")


def run_herd(server: ServerProcess, store: NginxStore, *, quitter: bool, evict_first: bool = False) -> None:
    data = os.urandom(SIZE)
    url = store.put("herd.img", data)
    token = server.admin_token
    with httpx.Client(base_url=server.url, headers={"X-Auth-Token": token}, timeout=30) as admin:
        image_id = new_image(admin, name="herd")
        assert add_location(admin, image_id, url, digests(data)).status_code == 202
        before = 0  # a fresh nginx: so far only the HEAD that told the size (no body)
        if evict_first:
            wait_cached_then_evict(admin, image_id)
            before = body_bytes(store)

        outcomes = [Outcome() for _ in range(CLIENTS)]
        go = threading.Event()
        threads = [
            threading.Thread(target=download, args=(server.url, token, image_id, out, go),
                             kwargs={"stop_after": 10_000 if quitter and i == 0 else None})
            for i, out in enumerate(outcomes)
        ]
        for t in threads:
            t.start()
        go.set()
        for t in threads:
            t.join(90)
        assert not any(t.is_alive() for t in threads)

    finishers = outcomes[1:] if quitter else outcomes
    assert [o.error for o in outcomes] == [""] * CLIENTS
    assert [o.status for o in outcomes] == [200] * CLIENTS
    assert [o.received for o in finishers] == [SIZE] * len(finishers)
    assert {o.sha512 for o in finishers} == {hashlib.sha512(data).hexdigest()}
    if quitter:
        assert outcomes[0].received < SIZE
    # Bytes flowed as they arrived: every client had its first bytes before any finished.
    assert max(o.first_byte for o in outcomes) < min(o.done for o in finishers)
    # Each byte was read upstream once, for all clients and the verify pass together.
    assert body_bytes(store) - before == SIZE
    with httpx.Client(base_url=server.url, headers={"X-Auth-Token": token}, timeout=30) as admin:
        assert admin.get(f"/v2/images/{image_id}").json()["status"] == "active"


@pytest.mark.parametrize("quitter", [False, True], ids=["all-finish", "one-hangs-up"])
def test_herd_reads_upstream_once(server_factory: Callable[..., ServerProcess],
                                  nginx_store_factory: Callable[..., NginxStore], quitter: bool) -> None:
    store = nginx_store_factory(limit_rate=SLOW)
    server = server_factory(config={"chunk_size": CHUNK})
    run_herd(server, store, quitter=quitter)


def test_herd_across_two_workers_known_addresses(server_factory: Callable[..., ServerProcess],
                                                 nginx_store_factory: Callable[..., NginxStore]) -> None:
    store = nginx_store_factory(limit_rate=SLOW)
    server = server_factory(workers=2, config={"chunk_size": CHUNK})
    run_herd(server, store, quitter=True, evict_first=True)


def test_herd_across_two_workers_first_fill(server_factory: Callable[..., ServerProcess],
                                            nginx_store_factory: Callable[..., NginxStore]) -> None:
    store = nginx_store_factory(limit_rate=SLOW)
    server = server_factory(workers=2, config={"chunk_size": CHUNK})
    run_herd(server, store, quitter=True)
