"""GET /metrics: Prometheus text, one set for all workers, cache figures as /v2/cache/stats has them."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.nginx_fixtures import NginxStore, nginx_store  # noqa: F401
from tests.server import ServerProcess, free_port

KiB = 1024


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``(sample name, sorted labels) -> value`` of one scrape (no token sent)."""
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _upload(api: httpx.Client, data: bytes) -> str:
    image_id = str(api.post("/v2/images", json={"name": "m", "disk_format": "raw", "container_format": "bare"}).json()["id"])
    assert api.put(f"/v2/images/{image_id}/file", content=data,
                   headers={"Content-Type": "application/octet-stream"}).status_code == 204
    return image_id


def test_two_workers_report_one_set(server_factory: Callable[..., ServerProcess]) -> None:
    proc = server_factory(workers=2, config={"chunk_size": 64 * KiB})
    data = random.Random(3).randbytes(300 * KiB)
    route = "/v2/images/{image_id}/file"
    histograms = proc.data_dir / "metrics"

    def pids() -> set[str]:  # each process keeps its counters in files of its own
        return {p.stem.rsplit("_", 1)[1] for p in histograms.glob("histogram_*.db")}

    reads = 0
    with httpx.Client(base_url=proc.url, headers={"X-Auth-Token": proc.admin_token}, timeout=30) as api:
        image_id = _upload(api, data)
        while reads < 6 or len(pids()) < 2:  # new connections, until both workers have served some
            assert reads < 200, "one worker took every connection"
            with httpx.Client(base_url=proc.url, headers={"X-Auth-Token": proc.admin_token}) as one:
                assert one.get(f"/v2/images/{image_id}/file").content == data
            reads += 1
    # A request is counted once its answer is sent: the other worker may still be at it.
    deadline = time.monotonic() + 5
    while True:
        samples = scrape(proc.url + "/metrics")  # no token: not behind the image API's tokens
        if value(samples, "imgproxy_image_first_byte_seconds_count", outcome="hit") >= reads:  # counted last
            break
        assert time.monotonic() < deadline, "the reads were not all counted"
        time.sleep(0.05)
    assert value(samples, "imgproxy_request_duration_seconds_count", method="GET", route=route, status="200") == reads
    assert value(samples, "imgproxy_request_duration_seconds_count", method="PUT", route=route, status="204") == 1
    assert value(samples, "imgproxy_image_reads_total", outcome="hit") == reads  # uploads fill the cache
    assert value(samples, "imgproxy_image_served_bytes_total", source="cache") == reads * len(data)
    assert value(samples, "imgproxy_image_served_bytes_total", source="fill") == 0
    assert value(samples, "imgproxy_image_first_byte_seconds_count", outcome="hit") == reads
    buckets = [v for (name, labels), v in samples.items()
               if name == "imgproxy_request_duration_seconds_bucket" and ("route", route) in labels
               and ("method", "GET") in labels]
    assert max(buckets) == reads  # the +Inf bucket holds them all


def test_cache_figures_match_the_stats_api(server_factory: Callable[..., ServerProcess],
                                           nginx_store: NginxStore) -> None:  # noqa: F811
    proc = server_factory(config={"file": {"in_place": False}, "chunk_size": 64 * KiB, "cache_max_size": 50 * 1024 * KiB,
                                  "prefetch_interval": 0})
    data = random.Random(4).randbytes(200 * KiB)
    url = nginx_store.put(f"metrics-{time.time_ns()}.img", data)
    with httpx.Client(base_url=proc.url, headers={"X-Auth-Token": proc.admin_token}, timeout=30) as api:
        image_id = str(api.post("/v2/images", json={"name": "by-url", "disk_format": "raw",
                                                      "container_format": "bare"}).json()["id"])
        validation = {"os_hash_algo": "sha512", "os_hash_value": hashlib.sha512(data).hexdigest()}
        assert api.post(f"/v2/images/{image_id}/locations", json={"url": url, "validation_data": validation}
                        ).status_code == 202
        assert api.get(f"/v2/images/{image_id}/file").content == data  # cold: from the http store
        deadline = time.monotonic() + 10
        while api.get("/v2/cache/stats").json()["fills"] < 4:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert api.get(f"/v2/images/{image_id}/file").content == data  # warm
        stats = api.get("/v2/cache/stats").json()
        samples = scrape(proc.url + "/metrics")
        assert stats == api.get("/v2/cache/stats").json()  # nothing moved in between
    assert value(samples, "imgproxy_store_read_bytes_total", store="http") == len(data)
    assert value(samples, "imgproxy_fill_duration_seconds_count", store="http") == 4  # one store read per chunk
    assert value(samples, "imgproxy_store_first_byte_seconds_count", store="http") == 4
    # The cold read waits on fills for some chunks at least; a chunk its fill stored before the
    # reader reached it is read from disk (the fill's buffer is let go): a miss, or partial.
    cold = value(samples, "imgproxy_image_reads_total", outcome="miss") + value(
        samples, "imgproxy_image_reads_total", outcome="partial")
    assert cold == 1
    assert value(samples, "imgproxy_image_reads_total", outcome="hit") == 1
    filled = value(samples, "imgproxy_image_served_bytes_total", source="fill")
    assert 0 < filled <= len(data)
    assert filled + value(samples, "imgproxy_image_served_bytes_total", source="cache") == 2 * len(data)
    for key, name in (("hits", "imgproxy_cache_hits_total"), ("misses", "imgproxy_cache_misses_total"),
                      ("fills", "imgproxy_cache_fills_total"), ("bytes_upstream", "imgproxy_cache_upstream_bytes_total"),
                      ("coalesced_waiters", "imgproxy_cache_coalesced_waiters_total"),
                      ("evicted_chunks", "imgproxy_cache_evicted_chunks_total"),
                      ("corrupt_chunks", "imgproxy_cache_verification_failures_total"),
                      ("bytes_cached", "imgproxy_cache_size_bytes"), ("chunks", "imgproxy_cache_chunks"),
                      ("max_size", "imgproxy_cache_max_bytes"), ("queued", "imgproxy_prefetch_queued_images")):
        assert value(samples, name) == stats[key], name
    assert stats["misses"] == 4 and stats["bytes_cached"] == len(data) and stats["max_size"] == 50 * 1024 * KiB
    assert value(samples, "imgproxy_fills_in_flight") == 0
    assert 0 < value(samples, "imgproxy_lmdb_used_bytes") <= value(samples, "imgproxy_lmdb_map_bytes")


def test_metrics_on_a_separate_address(server_factory: Callable[..., ServerProcess]) -> None:
    port = free_port()
    proc = server_factory(workers=2, config={"metrics_listen": f"127.0.0.1:{port}"})
    assert httpx.get(proc.url + "/metrics").status_code == 404  # not on the API port then
    with httpx.Client(base_url=proc.url, headers={"X-Auth-Token": proc.admin_token}, timeout=30) as api:
        for _ in range(3):
            assert api.get("/v2/images").status_code == 200
    samples = scrape(f"http://127.0.0.1:{port}/metrics")
    assert value(samples, "imgproxy_request_duration_seconds_count", method="GET", route="/v2/images",
                 status="200") == 3
    deadline = time.monotonic() + 15  # the cache figures the workers leave every 10 s
    while value(samples, "imgproxy_cache_max_bytes") == 0:
        assert time.monotonic() < deadline, "no cache figures on the metrics address"
        time.sleep(0.5)
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
    assert value(samples, "imgproxy_cache_max_bytes") == 10 * 1024**3


def test_metrics_off(server_factory: Callable[..., ServerProcess]) -> None:
    proc = server_factory(config={"metrics": False})
    r = httpx.get(proc.url + "/metrics")
    assert r.status_code == 404 and r.json()["error"]["title"] == "Not Found"
    assert not (proc.data_dir / "metrics").exists()
    assert httpx.get(proc.url + "/versions").headers["x-openstack-request-id"].startswith("req-")
