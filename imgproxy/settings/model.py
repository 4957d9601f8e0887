"""The settings object: every setting, its default and why it exists; and the error a bad
value raises. Built only by :func:`imgproxy.settings.load_settings`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends import StoreConfig

__all__ = ["Settings", "SettingsError", "AUTH_MODES", "IMPORT_METHODS", "KiB", "MiB", "GiB", "TiB"]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

AUTH_MODES = ("tokens", "keystone", "noauth")
IMPORT_METHODS = ("glance-direct", "web-download", "copy-image", "glance-download")


class SettingsError(ValueError):
    """A setting has a bad value; ``key`` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"setting {key!r}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class Settings:
    """Everything the service can be told. Built only by :func:`load_settings`."""

    data_dir: Path = Path("imgproxy-data")
    host: str = "127.0.0.1"
    port: int = 9292
    workers: int = 1
    # Threads per worker that run sendfile for cached data while more than a few responses
    # stream at once (0: the event loop sends everything itself).
    sendfile_threads: int = 4
    auth: str = "tokens"
    # URL of the one store that keeps image data (shorthand for one [stores.NAME] table, its
    # id the URL's scheme); "" means file://<data_dir>/images.
    store: str = ""
    # Id of the store uploads go to when they name none (with [stores.NAME] tables).
    default_store: str = ""
    # Glance's delayed_delete: a deleted image turns pending_delete and its data stays
    # scrub_time seconds before the reaper removes it.
    delayed_delete: bool = False
    scrub_time: float = 0.0
    # Largest image a client may upload (Glance's image_size_cap default: 1 TiB).
    image_size_cap: int = TiB
    # Uploads one process receives at once; more are answered 503 with Retry-After.
    max_uploads: int = 16
    # Largest JSON request body (create, patch, members).
    max_json_body: int = 64 * KiB
    # Connections (per worker process) served at once; a request on one more is answered 503.
    # High, because connections are cheap on the event loop and idle ones are closed after
    # keepalive_timeout: a thousand idle connections must not turn a compute node away.
    max_connections: int = 4096
    # Connections the kernel queues before the service accepts them (listen(2) backlog).
    listen_backlog: int = 2048
    # Seconds a connection may wait, idle or receiving a request head, before it is closed.
    keepalive_timeout: int = 5
    # Largest request line plus headers, in bytes (more: 431, connection closed).
    max_request_head: int = 128 * KiB
    # Cache.
    chunk_size: int = 4 * MiB
    cache_max_size: int = 10 * GiB
    cache_high_watermark: float = 0.9
    cache_low_watermark: float = 0.8
    # Background loops (seconds between runs; 0 disables the loop).
    prune_interval: float = 30.0
    clean_interval: float = 300.0
    prefetch_interval: float = 5.0
    prefetch_concurrency: int = 2
    audit_bytes_per_second: int = 64 * MiB
    reap_interval: float = 60.0
    # Temp files older than this are leftovers of a crash.
    stale_temp_age: float = 3600.0
    # Upstream reads.
    upstream_timeout: float = 30.0
    upstream_retries: int = 3
    # Store reads a reader keeps in flight ahead of the chunk it is sending (parallel ranged reads
    # upstream), each of fill_read_chunks chunks.
    readahead_chunks: int = 2
    # Chunks a read-ahead fill asks the store for in one read (the next missing ones ride along);
    # 0: each store kind's own (backends.base.read_chunks).
    fill_read_chunks: int = 0
    # Edge mode: the image API this service caches in front of ("" = none; it keeps its own images).
    upstream_api: str = ""
    # The edge's own token for the upstream, for work no caller asked for (prefetching).
    upstream_token: str = field(default="", repr=False)
    # Seconds an upstream authorization (token, image) is reused for data requests.
    edge_auth_ttl: float = 5.0
    # Import methods offered (Glance's enabled_import_methods): glance-direct, web-download,
    # copy-image, glance-download.
    enabled_import_methods: tuple[str, ...] = ("glance-direct", "web-download", "copy-image")
    # This node's URL as other API nodes reach it (Glance's worker_self_reference_url): where
    # glance-direct's staged data lives. "" = http://<host>:<port>.
    worker_self_reference_url: str = ""
    # Fills in flight per worker, and the bytes of their chunk buffers: a reader that needs
    # a chunk waits for room; read-ahead only starts when there is room at once.
    max_fills: int = 32
    fill_memory: int = 96 * MiB
    # auth = "keystone": the identity service that issues the callers' tokens (its public
    # URL, also named in a 401's WWW-Authenticate), and the service's own credentials for
    # validating them: a user in a project (as keystonemiddleware's [keystone_authtoken]),
    # or an application credential.
    keystone_url: str = ""
    keystone_user: str = ""
    keystone_password: str = field(default="", repr=False)
    keystone_project: str = "service"
    keystone_user_domain: str = "Default"
    keystone_project_domain: str = "Default"
    keystone_app_credential_id: str = ""
    keystone_app_credential_secret: str = field(default="", repr=False)
    # Seconds one request to Keystone may take.
    keystone_timeout: float = 10.0
    # Seconds a validated (or refused) token is remembered: a revoked token stops working
    # within this long; a token is never used past its own expiry.
    token_cache_seconds: float = 300.0
    # LMDB map size (address space, not disk).
    lmdb_map_size: int = 64 * GiB
    log_level: str = "info"
    # "text" (key=value) or "json" (one object a line) for every log line, request lines included.
    log_format: str = "text"
    # One log line per request (id, route, status, bytes, duration, cache outcome).
    request_log: bool = True
    # Prometheus metrics at GET /metrics (false: no /metrics and no counting on the request path).
    metrics: bool = True
    # "host:port" to serve /metrics on instead of the API's address ("" = on the API port).
    metrics_listen: str = ""
    # While this file exists GET /healthcheck answers 503 "DISABLED BY FILE" (oslo.middleware's
    # disable_by_file): take a node out of its load balancer without stopping it.
    healthcheck_disable_file: str = ""
    # A token that may read GET /status besides admins' (for a wall screen); not in repr.
    status_token: str = field(default="", repr=False)
    # Per-scheme tables ([s3], [http], ...): the shorthand store's options, and those of
    # readers of image locations in no configured store. Not in repr: they may hold secrets.
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # The stores by id, in configuration order: the [stores.NAME] tables, or the one that
    # ``store`` names. Filled (and ``default_store`` resolved) by load_settings.
    stores: Mapping[str, StoreConfig] = field(default_factory=dict, compare=False)

    @property
    def store_url(self) -> str:
        """URL of the default store."""
        if self.default_store in self.stores:
            return self.stores[self.default_store].url
        return self.store or (self.data_dir.resolve() / "images").as_uri()

    @property
    def edge(self) -> bool:
        return bool(self.upstream_api)

    @property
    def auth_enabled(self) -> bool:
        return self.auth != "noauth"
