"""``imgproxy cache prefetch --url URL... --token T IMAGE... [--wait]`` against two running services."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cache_http import CHUNK, CacheClient, cache_server_config, payload, wait_for
from tests.server import ServerProcess

IMAGE_SIZE = 16 * CHUNK


@pytest.fixture
def services(tmp_path: Path) -> Iterator[tuple[CacheClient, CacheClient]]:
    """Two services with one admin token (the second gets a copy of the first's tokens file),
    as a rack's nodes would share the cloud's tokens."""
    first = ServerProcess(tmp_path / "a", config=cache_server_config())
    second = ServerProcess(tmp_path / "b", config=cache_server_config())
    clients: list[CacheClient] = []
    try:
        first.start()
        second.data_dir.mkdir(parents=True)
        shutil.copy(first.data_dir / "tokens.json", second.data_dir / "tokens.json")
        second.start()
        clients = [CacheClient(first), CacheClient(second)]
        yield clients[0], clients[1]
    finally:
        for c in clients:
            c.close()
        first.stop()
        second.stop()


def _cold_image(services: tuple[CacheClient, ...], seed: int) -> str:
    """The same image (id and bytes) on every service, in its store but not in its cache."""
    image_id = str(uuid.uuid4())
    for api in services:
        api.new_image(payload(IMAGE_SIZE, seed), id=image_id)
        assert api.http.delete(f"/v2/cache/{image_id}").status_code == 204
        progress = api.http.get(f"/v2/cache/{image_id}").json()
        assert progress == {"image_id": image_id, "cached_bytes": 0, "size": IMAGE_SIZE, "complete": False,
                            "queued": False}
    return image_id


def _prefetch(services: tuple[CacheClient, ...], *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    urls = [arg for api in services for arg in ("--url", api.server.url)]
    token = token or services[0].server.admin_token
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGPROXY_", "OS_"))}
    return subprocess.run([sys.executable, "-m", "imgproxy", "cache", "prefetch", *urls, "--token", token,
                           "--interval", "0.2", *args], capture_output=True, text=True, env=env, timeout=120)


def _rows(stdout: str) -> dict[tuple[str, str], list[str]]:
    """The summary table's rows by (image, service)."""
    table = stdout[stdout.index("IMAGE  "):].splitlines()[1:]
    return {(cells[0], cells[1]): cells for cells in (re.split(r"\s{2,}", line.strip()) for line in table)}


def test_wait_follows_every_image_on_every_service_until_cached(services: tuple[CacheClient, CacheClient]) -> None:
    images = [_cold_image(services, seed) for seed in (1, 2)]
    done = _prefetch(services, *images, "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = _rows(done.stdout)
    hosts = [api.server.url.removeprefix("http://") for api in services]
    assert set(rows) == {(image, host) for image in images for host in hosts}
    assert all(row[3] == "cached" and row[2] == "1.0 MiB" for row in rows.values())
    # A progress bar per image and service, each ending full.
    for image in images:
        for host in hosts:
            bar = re.compile(rf"^{image}  {re.escape(host)}\s+\[#+\]\s+100\.0%.* cached$", re.M)
            assert bar.search(done.stdout), done.stdout
    for api in services:
        assert set(images) <= set(api.cached())
        for image in images:
            progress = api.http.get(f"/v2/cache/{image}").json()
            assert progress["complete"] and progress["cached_bytes"] == IMAGE_SIZE


def test_without_wait_the_images_are_queued_and_fill_on_their_own(services: tuple[CacheClient, CacheClient]) -> None:
    image = _cold_image(services, 3)
    done = _prefetch(services, image)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [row[3] for row in _rows(done.stdout).values()] == ["queued", "queued"]
    for api in services:
        assert wait_for(lambda: image in api.cached()), f"{api.server.url} did not cache {image}"


def test_refusals_fail_their_rows_with_the_services_words(services: tuple[CacheClient, CacheClient]) -> None:
    image = _cold_image(services[:1], 4)  # on the first service only
    done = _prefetch(services, image, "--wait")
    assert done.returncode == 1
    first, second = (api.server.url.removeprefix("http://") for api in services)
    rows = _rows(done.stdout)
    assert rows[(image, first)][3] == "cached"
    assert rows[(image, second)][3] == "failed" and rows[(image, second)][5].startswith("404: ")

    from imgproxy.tokens import create_token

    member = create_token(services[0].server.data_dir / "tokens.json", project="p", roles=["member"])
    done = _prefetch(services[:1], image, token=member)
    assert done.returncode == 1
    row = _rows(done.stdout)[(image, first)]
    assert (row[3], row[5]) == ("failed", "403: Managing the image cache is restricted to administrators.")


def test_images_without_url_or_token_are_refused(services: tuple[CacheClient, CacheClient]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGPROXY_", "OS_"))}
    run = [sys.executable, "-m", "imgproxy", "cache", "prefetch"]
    no_url = subprocess.run([*run, "--token", "t", "some-image"], capture_output=True, text=True, env=env)
    assert no_url.returncode == 2 and "--url" in no_url.stderr
    no_token = subprocess.run([*run, "--url", services[0].server.url, "some-image"], capture_output=True, text=True,
                              env=env)
    assert no_token.returncode == 2 and "OS_AUTH_TOKEN" in no_token.stderr


def test_a_central_service_and_its_edge_at_once(tmp_path: Path) -> None:
    """The rack case: the central service and an edge in front of it, one admin token for both
    (the edge is given a copy of the central's tokens file, and that token for the upstream)."""
    central = ServerProcess(tmp_path / "central", config=cache_server_config())
    edge: ServerProcess | None = None
    try:
        central.start()
        token = central.admin_token
        edge = ServerProcess(tmp_path / "edge", config={"chunk_size": CHUNK, "upstream_api": central.url,
                                                        "upstream_token": token, "prefetch_interval": 0})
        edge.data_dir.mkdir(parents=True)
        shutil.copy(central.data_dir / "tokens.json", edge.data_dir / "tokens.json")
        edge.start()
        nodes = (CacheClient(central), CacheClient(edge, token))
        image = _cold_image(nodes[:1], 5)
        try:
            done = _prefetch(nodes, image, "--wait")
            assert done.returncode == 0, done.stdout + done.stderr
            assert [row[3] for row in _rows(done.stdout).values()] == ["cached", "cached"]
            progress = nodes[1].http.get(f"/v2/cache/{image}").json()
            assert progress == {"image_id": image, "cached_bytes": IMAGE_SIZE, "size": IMAGE_SIZE, "complete": True,
                                "queued": False}
            assert nodes[1].http.get("/v2/cache/not-an-image").status_code == 404
        finally:
            for c in nodes:
                c.close()
    finally:
        if edge is not None:
            edge.stop()
        central.stop()
