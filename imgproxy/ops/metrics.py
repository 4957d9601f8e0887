"""Prometheus metrics: what each worker counts, and the text every scrape returns.

Multiprocess mode: ``imgproxy serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at
``<data_dir>/metrics`` (emptied at start, :mod:`.paths`) before any
worker imports prometheus_client, so each worker's counters live in files there and a scrape
of any worker, or of the ``metrics_listen`` address, sums them all: ``--workers N`` report
one set. Without that variable (the app built in-process) the counters stay in memory.

Cache-wide figures (hits, misses, evictions, sizes...) are not counted here: the cache keeps
them in LMDB for all processes. A scrape reads them (:mod:`imgproxy.ops.figures`) and adds
them as they are, so the request path pays nothing for them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..settings import Settings
from .paths import multiprocess_dir

__all__ = ["CONTENT_TYPE", "Metrics", "open_metrics", "render", "serve_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds: a metadata call takes ~1 ms, a cold 10 GiB download minutes.
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
_FIRST_BYTE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# Cache-wide counters as ImageCache.stats() names them -> (metric name, help).
CACHE_COUNTERS = {
    "hits": ("imgproxy_cache_hits", "Chunk reads served from the cache's disk."),
    "misses": ("imgproxy_cache_misses", "Chunk fills started (a chunk read that was not cached)."),
    "coalesced_waiters": ("imgproxy_cache_coalesced_waiters", "Reads that joined a fill already in flight."),
    "fills": ("imgproxy_cache_fills", "Chunk fills completed and stored."),
    "fill_failures": ("imgproxy_cache_fill_failures", "Chunk fills that failed (their readers got an error)."),
    "uncached_fills": ("imgproxy_cache_uncached_fills", "Fills served without storing the chunk (cache full)."),
    "bytes_upstream": ("imgproxy_cache_upstream_bytes", "Bytes fills read from the stores."),
    "bytes_served": ("imgproxy_cache_read_bytes", "Bytes the cache handed to readers (from disk or fills)."),
    "upstream_retries": ("imgproxy_cache_upstream_retries", "Store reads retried after a failure."),
    "corrupt_chunks": ("imgproxy_cache_verification_failures", "Cached chunks that failed verification (dropped)."),
    "collisions": ("imgproxy_cache_collisions", "Chunks whose address matched different bytes (not shared)."),
    "evicted_chunks": ("imgproxy_cache_evicted_chunks", "Chunks evicted to keep the cache under its limit."),
    "evicted_bytes": ("imgproxy_cache_evicted_bytes", "Bytes evicted to keep the cache under its limit."),
}
CACHE_GAUGES = {
    "bytes_cached": ("imgproxy_cache_size_bytes", "Bytes of chunks in the cache."),
    "chunks": ("imgproxy_cache_chunks", "Chunks in the cache."),
    "max_size": ("imgproxy_cache_max_bytes", "The cache's size limit."),
    "high_watermark_bytes": ("imgproxy_cache_high_watermark_bytes", "Pruning starts above this."),
    "low_watermark_bytes": ("imgproxy_cache_low_watermark_bytes", "Pruning stops at this."),
    "queued": ("imgproxy_prefetch_queued_images", "Images in the prefetch queue."),
    "lmdb_file_bytes": ("imgproxy_lmdb_file_bytes", "Size of the LMDB data file."),
    "lmdb_used_bytes": ("imgproxy_lmdb_used_bytes", "Bytes of the LMDB map in use."),
    "lmdb_map_bytes": ("imgproxy_lmdb_map_bytes", "The LMDB map size (address space)."),
}


class Metrics:
    """The counters of one worker process. Cheap to feed (a lock and a store per call);
    labelled children the hot path uses are bound once, here."""

    def __init__(self) -> None:
        # Files only if prometheus_client saw the directory when it was first imported.
        self.multiprocess = multiprocess_dir() is not None and values.ValueClass is not values.MutexValue
        # In multiprocess mode the values live in files: nothing to register.
        self.registry = None if self.multiprocess else CollectorRegistry()
        r = self.registry
        self.requests = Histogram(
            "imgproxy_request_duration_seconds", "Requests by method, route template and status: time to the last byte.",
            ["method", "route", "status"], buckets=_REQUEST_BUCKETS, registry=r)
        served = Counter("imgproxy_image_served_bytes", "Image data bytes sent to clients, by where they came from "
                         "(cache: its disk; fill: a fill from a store, shared by its waiters).", ["source"], registry=r)
        self.served_cache = served.labels("cache")
        self.served_fill = served.labels("fill")
        self.reads = Counter("imgproxy_image_reads", "Image data reads (GET .../file) by cache outcome: hit (all from "
                             "the cache), miss (all from fills), partial.", ["outcome"], registry=r)
        self.first_byte = Histogram("imgproxy_image_first_byte_seconds", "Image data reads: request to first body byte.",
                                    ["outcome"], buckets=_FIRST_BYTE_BUCKETS, registry=r)
        self.store_bytes = Counter("imgproxy_store_read_bytes", "Bytes read from each store.", ["store"], registry=r)
        self.store_first_byte = Histogram("imgproxy_store_first_byte_seconds", "Store reads: call to first byte.",
                                          ["store"], buckets=_FIRST_BYTE_BUCKETS, registry=r)
        self.fill_seconds = Histogram("imgproxy_fill_duration_seconds", "Store reads that fill a chunk: call to last byte.",
                                      ["store"], buckets=_REQUEST_BUCKETS, registry=r)
        self.fills_in_flight = Gauge("imgproxy_fills_in_flight", "Chunk fills running now.", registry=r,
                                     multiprocess_mode="livesum")

    def close(self) -> None:
        """This process stops: its gauges stop counting (counters stay, as Prometheus expects)."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def open_metrics(settings: Settings) -> Metrics | None:
    """This process's metrics, or None when ``metrics = false``."""
    return Metrics() if settings.metrics else None


class _CacheCollector(Collector):
    """The cache-wide figures of one scrape (see the module docs)."""

    def __init__(self, figures: Mapping[str, Any]) -> None:
        self.figures = figures

    def collect(self) -> Iterable[Metric]:
        for key, (name, text) in CACHE_COUNTERS.items():
            if key in self.figures:
                yield CounterMetricFamily(name, text, value=self.figures[key])
        for key, (name, text) in CACHE_GAUGES.items():
            if key in self.figures:
                yield GaugeMetricFamily(name, text, value=self.figures[key])


class _Own(Collector):
    """One process's in-memory counters (no multiprocess dir)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


def render(metrics: Metrics | None, figures: Mapping[str, Any]) -> bytes:
    """The text exposition: every worker's counters (``metrics`` is this process's, or None
    where only the files are read, as the ``metrics_listen`` server does) and ``figures``."""
    registry = CollectorRegistry()  # one per scrape: scrapes may run in threads at once
    if metrics is not None and metrics.registry is not None:
        registry.register(_Own(metrics.registry))
    else:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(_CacheCollector(figures))
    return generate_latest(registry)


def serve_metrics(address: str, figures: Callable[[], Mapping[str, Any]]) -> None:
    """Serve the multiprocess files and ``figures()`` on ``address`` ("host:port") from a
    daemon thread of this process (the CLI's, which supervises the workers)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    host, _, port = address.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404, "Only /metrics is served here.")
                return
            body = render(None, figures())
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None  # scrapes every few seconds would drown the log

    server = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
    server.daemon_threads = True
    Thread(target=server.serve_forever, name="imgproxy-metrics", daemon=True).start()
