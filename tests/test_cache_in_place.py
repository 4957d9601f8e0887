"""The cache API for images a local file store serves in place (the default): their bytes are
already on this node's disk, so the cache holds no copy of them, and the cache API says they
are held whole. Before, ``PUT /v2/cache/{id}`` answered 202 for them and then nothing ever
showed them held: ``imgproxy cache prefetch --wait`` waited until its timeout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cache_http import CHUNK, CacheClient, payload
from tests.server import ServerProcess
from tests.test_preheat import _prefetch, _rows

SIZE = 3 * CHUNK + 7


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CacheClient]:
    config = {"chunk_size": CHUNK, "prefetch_interval": 0}  # [file] in_place: its default, true
    with ServerProcess(tmp_path_factory.mktemp("in-place") / "data", config=config) as proc:
        client = CacheClient(proc)
        yield client
        client.close()


def test_an_image_read_in_place_is_held_whole(api: CacheClient) -> None:
    image_id = api.new_image(payload(SIZE, seed=3))
    assert api.http.put(f"/v2/cache/{image_id}").status_code == 202
    assert api.http.get(f"/v2/cache/{image_id}").json() == {
        "image_id": image_id, "cached_bytes": SIZE, "size": SIZE, "complete": True, "queued": False}
    assert api.http.get(f"/v2/cache/nodes/{image_id}").json() == [api.server.url + "/"]
    assert image_id not in api.http.get("/v2/cache").json()["queued_images"]


def test_prefetch_wait_ends_at_once_for_it(api: CacheClient, tmp_path: Path) -> None:
    image_id = api.new_image(payload(SIZE, seed=4))
    done = _prefetch((api,), image_id, "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    row = _rows(done.stdout)[(image_id, api.server.url.removeprefix("http://"))]
    assert "cached" in row, row
