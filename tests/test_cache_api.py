"""Glance's cache API (``/v2/cache``) and ``/v2/cache/stats`` over HTTP against a real server,
plus the real ``glance cache-*`` commands (python-glanceclient 4.13)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.cache_http import CHUNK, CacheClient, cache_server_config, payload, wait_for
from tests.server import ServerProcess

SIZE = 5 * CHUNK + 123  # a short last chunk


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("cacheapi") / "data", config=cache_server_config())
    with proc:
        yield proc


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[CacheClient]:
    client = CacheClient(server)
    yield client
    client.close()


@pytest.fixture(scope="module")
def member(server: ServerProcess) -> Iterator[httpx.Client]:
    from imgproxy.tokens import create_token

    token = create_token(server.data_dir / "tokens.json", project=f"p-{uuid.uuid4().hex[:6]}", roles=["member"])
    client = httpx.Client(base_url=server.url, headers={"X-Auth-Token": token}, timeout=30)
    # The server picks up new tokens when it re-reads the tokens file.
    wait_for(lambda: client.get("/v2/images").status_code != 401)
    yield client
    client.close()


def unshare_store(server: ServerProcess, image_id: str) -> None:
    """Make the store unable to serve the image, so only the cache can."""
    os.rename(server.data_dir / "images" / image_id, server.data_dir / "images" / f"moved-{image_id}")


def restore_store(server: ServerProcess, image_id: str) -> None:
    os.rename(server.data_dir / "images" / f"moved-{image_id}", server.data_dir / "images" / image_id)


# --- access -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/v2/cache"),
        ("DELETE", "/v2/cache"),
        ("PUT", "/v2/cache/{id}"),
        ("DELETE", "/v2/cache/{id}"),
        ("POST", "/v2/cache/prune"),
        ("POST", "/v2/cache/clean"),
        ("GET", "/v2/cache/nodes/{id}"),
        ("GET", "/v2/cache/stats"),
    ],
)
def test_member_is_forbidden(api: CacheClient, member: httpx.Client, method: str, path: str) -> None:
    image_id = member.post("/v2/images", json={"name": "mine", "disk_format": "raw", "container_format": "bare"})
    assert image_id.status_code == 201
    r = member.request(method, path.format(id=image_id.json()["id"]))
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == 403


def test_no_token_is_unauthorized(server: ServerProcess) -> None:
    assert httpx.get(server.url + "/v2/cache").status_code == 401


# --- listing ----------------------------------------------------------------------------------------


def test_uploaded_image_is_listed_as_cached(api: CacheClient) -> None:
    data = payload(SIZE, seed=1)
    image_id = api.new_image(data)
    row = api.cached()[image_id]
    assert set(row) == {"image_id", "hits", "last_accessed", "last_modified", "size"}
    assert row["size"] == SIZE
    assert row["last_modified"] > 0
    assert image_id not in api.queued()

    assert api.download(image_id) == data
    assert wait_for(lambda: api.cached()[image_id]["hits"] >= 1)
    assert api.cached()[image_id]["last_accessed"] > 0


def test_image_without_data_is_not_listed(api: CacheClient) -> None:
    image_id = api.create_image()
    assert image_id not in api.cached()


# --- queue (PUT) ------------------------------------------------------------------------------------


def test_queue_unknown_image_is_404(api: CacheClient) -> None:
    assert api.http.put(f"/v2/cache/{uuid.uuid4()}").status_code == 404
    assert api.http.put("/v2/cache/not-a-uuid").status_code == 404


def test_queue_image_without_data_is_400(api: CacheClient) -> None:
    image_id = api.create_image()
    r = api.http.put(f"/v2/cache/{image_id}")
    assert r.status_code == 400
    assert "active" in r.json()["error"]["message"]
    assert image_id not in api.queued()


def test_queue_deactivated_image_is_400(api: CacheClient) -> None:
    image_id = api.new_image(payload(CHUNK, seed=2))
    assert api.http.post(f"/v2/images/{image_id}/actions/deactivate").status_code == 204
    assert api.http.put(f"/v2/cache/{image_id}").status_code == 400


def test_evict_then_queue_refills(server: ServerProcess, api: CacheClient) -> None:
    data = payload(SIZE, seed=3)
    image_id = api.new_image(data)
    before = api.stats()["bytes_cached"]

    assert api.http.delete(f"/v2/cache/{image_id}").status_code == 204
    assert image_id not in api.cached()
    assert api.stats()["bytes_cached"] == before - SIZE

    r = api.http.put(f"/v2/cache/{image_id}")
    assert r.status_code == 202
    # The prefetcher starts at once (its loop is off in this server).
    row = wait_for(lambda: api.cached().get(image_id))
    assert row is not None and row["size"] == SIZE
    assert wait_for(lambda: image_id not in api.queued())
    # Filled from the store: now the cache alone can serve it.
    unshare_store(server, image_id)
    try:
        assert api.download(image_id) == data
    finally:
        restore_store(server, image_id)


# --- delete one -------------------------------------------------------------------------------------


def test_delete_unknown_is_404(api: CacheClient) -> None:
    assert api.http.delete(f"/v2/cache/{uuid.uuid4()}").status_code == 404


def test_delete_uncached_known_image_is_204(api: CacheClient) -> None:
    image_id = api.create_image()
    assert api.http.delete(f"/v2/cache/{image_id}").status_code == 204


def test_delete_then_download_refills(api: CacheClient) -> None:
    data = payload(SIZE, seed=4)
    image_id = api.new_image(data)
    assert api.http.delete(f"/v2/cache/{image_id}").status_code == 204
    assert image_id not in api.cached()
    assert api.download(image_id) == data
    row = wait_for(lambda: api.cached().get(image_id))
    assert row is not None and row["size"] == SIZE


def test_delete_keeps_chunks_shared_with_another_image(api: CacheClient) -> None:
    shared = payload(2 * CHUNK, seed=5)
    first = api.new_image(shared + payload(CHUNK, seed=6))
    second = api.new_image(shared + payload(CHUNK, seed=7))
    assert api.http.delete(f"/v2/cache/{first}").status_code == 204
    cached = api.cached()
    assert first not in cached
    assert cached[second]["size"] == 3 * CHUNK


# --- queue failures and clear -------------------------------------------------------------------------


def stuck_in_queue(server: ServerProcess, api: CacheClient, seed: int) -> str:
    """An image that stays queued: evicted, and its store object gone, so prefetch fails."""
    image_id = api.new_image(payload(2 * CHUNK, seed=seed))
    assert api.http.delete(f"/v2/cache/{image_id}").status_code == 204
    unshare_store(server, image_id)
    failures = api.stats()["fill_failures"]
    assert api.http.put(f"/v2/cache/{image_id}").status_code == 202
    assert wait_for(lambda: api.stats()["fill_failures"] > failures)  # the prefetcher tried
    return image_id


def test_failed_prefetch_stays_queued(server: ServerProcess, api: CacheClient) -> None:
    image_id = stuck_in_queue(server, api, seed=8)
    try:
        assert image_id in api.queued()
        assert image_id not in api.cached()
        # DELETE /v2/cache/{id} also takes it off the queue.
        assert api.http.delete(f"/v2/cache/{image_id}").status_code == 204
        assert image_id not in api.queued()
    finally:
        restore_store(server, image_id)


def test_clear_target_both_is_400(api: CacheClient) -> None:
    r = api.http.delete("/v2/cache", headers={"x-image-cache-clear-target": "both"})
    assert r.status_code == 400
    r = api.http.delete("/v2/cache", headers={"x-image-cache-clear-target": "everything"})
    assert r.status_code == 400


@pytest.fixture
def own_api(server_factory: Callable[..., ServerProcess]) -> Iterator[CacheClient]:
    """A server of the test's own, for tests that empty the whole cache or count from zero
    (on the module's server they would change what the other tests see)."""
    client = CacheClient(server_factory(config=cache_server_config()))
    yield client
    client.close()


def test_clear_queue_then_cache_then_both(own_api: CacheClient) -> None:
    api, server = own_api, own_api.server
    cached_id = api.new_image(payload(SIZE, seed=9))
    queued_id = stuck_in_queue(server, api, seed=10)
    try:
        assert queued_id in api.queued() and cached_id in api.cached()

        assert api.http.delete("/v2/cache", headers={"x-image-cache-clear-target": "queue"}).status_code == 204
        assert api.queued() == []
        assert cached_id in api.cached()

        assert api.http.put(f"/v2/cache/{queued_id}").status_code == 202
        assert api.http.delete("/v2/cache", headers={"x-image-cache-clear-target": "cache"}).status_code == 204
        assert api.cached() == {}
        assert api.stats()["bytes_cached"] == 0
        assert queued_id in api.queued()

        api.download(cached_id)
        assert wait_for(lambda: cached_id in api.cached())
        assert api.http.delete("/v2/cache").status_code == 204
        assert api.state() == {"cached_images": [], "queued_images": []}
    finally:
        restore_store(server, queued_id)


# --- prune, clean, nodes, stats -------------------------------------------------------------------------


def test_prune_and_clean_answer_like_glance(own_api: CacheClient) -> None:
    api = own_api
    api.new_image(payload(SIZE, seed=12))
    r = api.http.post("/v2/cache/prune")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"total_files_pruned", "total_bytes_pruned"}
    assert body == {"total_files_pruned": 0, "total_bytes_pruned": 0}  # far under the limit

    r = api.http.post("/v2/cache/clean")
    assert r.status_code == 200
    assert r.json()["total_files_cleaned"] == 0


def test_nodes(server: ServerProcess, api: CacheClient) -> None:
    image_id = api.new_image(payload(CHUNK, seed=11))
    r = api.http.get(f"/v2/cache/nodes/{image_id}")
    assert r.status_code == 200
    assert r.json() == [server.url + "/"]
    api.http.delete(f"/v2/cache/{image_id}")
    assert api.http.get(f"/v2/cache/nodes/{image_id}").json() == []
    assert api.http.get(f"/v2/cache/nodes/{uuid.uuid4()}").status_code == 404


def test_stats_count_hits_and_misses(api: CacheClient) -> None:
    data = payload(SIZE, seed=12)
    image_id = api.new_image(data)
    before = api.stats()
    for name in ("bytes_cached", "chunks", "hits", "misses", "bytes_upstream", "coalesced_waiters",
                 "corrupt_chunks", "max_size", "chunk_size", "queued", "active_fills"):
        assert name in before
    assert before["chunk_size"] == CHUNK

    assert api.download(image_id) == data  # all cached: hits, nothing from upstream
    mid = api.stats()
    assert mid["hits"] > before["hits"]
    assert mid["bytes_upstream"] == before["bytes_upstream"]

    api.http.delete(f"/v2/cache/{image_id}")
    assert api.download(image_id) == data  # all missing: read from the store once
    after = wait_for(lambda: (s := api.stats())["bytes_upstream"] >= mid["bytes_upstream"] + SIZE and s)
    assert after and after["misses"] > mid["misses"]
    assert after["bytes_upstream"] == mid["bytes_upstream"] + SIZE


# --- python-glanceclient ---------------------------------------------------------------------------------


def _close_stdin() -> None:
    os.close(0)


@pytest.fixture
def glance(server: ServerProcess, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "IMGPROXY_"))}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = ["glance", "--os-image-api-version", "2", "--os-image-url", server.url,
               "--os-auth-token", server.admin_token, *args]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path, check=False,
                           preexec_fn=_close_stdin)
        assert r.returncode == 0, f"{' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        # glanceclient reports cache API errors on stderr but still exits 0.
        assert r.stderr.strip() == "", r.stderr
        return r

    return run


def rows_of(table: str) -> dict[str, list[str]]:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines() if line.startswith("|")]
    return {row[0]: row for row in rows[1:]}


def test_glanceclient_cache_commands(server: ServerProcess, api: CacheClient, glance: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    data = payload(SIZE, seed=13)
    image_id = api.new_image(data)

    listed = rows_of(glance("cache-list").stdout)
    assert listed[image_id][1] == "cached"
    assert listed[image_id][4] == str(SIZE)

    glance("cache-delete", image_id)
    assert image_id not in rows_of(glance("cache-list").stdout)

    glance("cache-queue", image_id)
    assert wait_for(lambda: image_id in api.cached())

    assert "Pruned 0 file(s), 0 byte(s)." in glance("cache-prune").stdout
    glance("cache-clean")

    nodes = glance("cache-nodes-list", image_id).stdout
    assert server.url + "/" in nodes

    glance("cache-clear", "--target", "cache")
    assert api.cached() == {}
    glance("cache-clear")
    assert api.state() == {"cached_images": [], "queued_images": []}


def test_evict_right_after_a_cold_read_leaves_nothing_cached(server: ServerProcess, api: CacheClient) -> None:
    """A reader gets a fill's last byte before the fill has published its chunk: an eviction
    right after such a read must still remove it (it waits for the image's fills to end).
    Before, the chunk landed after the eviction and the next read was served from the cache
    with the store gone (seen as a flaky 200 in tests/test_stores_e2e.py)."""
    for seed in range(12):
        data = payload(CHUNK + 1, seed=100 + seed)
        image_id = api.new_image(data)
        api.http.delete(f"/v2/cache/{image_id}")
        assert api.download(image_id) == data  # cold: fills from the store
        assert api.http.delete(f"/v2/cache/{image_id}").status_code == 204
        unshare_store(server, image_id)
        r = api.http.get(f"/v2/images/{image_id}/file")
        assert r.status_code == 503 and r.json()["error"]["message"], (seed, r.status_code)
