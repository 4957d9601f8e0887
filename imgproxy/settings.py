"""One frozen settings object, read from a TOML file and ``IMGPROXY_*`` variables.

Precedence, lowest first: defaults, the config file, the environment, explicit
overrides (command-line flags). Every value is validated once, here; a bad value
raises :class:`SettingsError` naming the key, and the service does not start.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Settings", "SettingsError", "load_settings"]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

AUTH_MODES = ("tokens", "keystone", "noauth")


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
    auth: str = "tokens"
    # URL of the store that keeps image data; "" means file://<data_dir>/images.
    store: str = ""
    # Largest image a client may upload (Glance's image_size_cap default: 1 TiB).
    image_size_cap: int = TiB
    # Uploads one process receives at once; more are answered 503 with Retry-After.
    max_uploads: int = 16
    # Largest JSON request body (create, patch, members).
    max_json_body: int = 64 * KiB
    # Connections (per worker process) served at once; a request on one more is answered 503.
    max_connections: int = 1000
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
    # Temp files older than this are leftovers of a crash.
    stale_temp_age: float = 3600.0
    # Upstream reads.
    upstream_timeout: float = 30.0
    upstream_retries: int = 3
    # Chunks a reader fills ahead of the one it is sending (parallel ranged reads upstream).
    readahead_chunks: int = 2
    # Edge mode: the image API this service caches in front of ("" = none; it keeps its own images).
    upstream_api: str = ""
    # The edge's own token for the upstream, for work no caller asked for (prefetching).
    upstream_token: str = field(default="", repr=False)
    # Seconds an upstream authorization (token, image) is reused for data requests.
    edge_auth_ttl: float = 5.0
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
    # Per-store tables ([s3], [http], ...); not in repr: they may hold secrets.
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def store_url(self) -> str:
        return self.store or (self.data_dir.resolve() / "images").as_uri()

    @property
    def edge(self) -> bool:
        return bool(self.upstream_api)

    @property
    def auth_enabled(self) -> bool:
        return self.auth != "noauth"


_FIELDS = {f.name: f for f in dataclasses.fields(Settings) if f.name != "extra"}

# Store secrets that may come from the environment instead of the config file:
# variable -> (store table, key). The variable wins over the file, like every IMGPROXY_* one.
_STORE_SECRETS = {
    "IMGPROXY_S3_ACCESS_KEY": ("s3", "access_key"),
    "IMGPROXY_S3_SECRET_KEY": ("s3", "secret_key"),
    "IMGPROXY_SWIFT_KEY": ("swift", "key"),
}


def _convert(key: str, raw: Any) -> Any:
    default: Any = _FIELDS[key].default
    kind = type(default)
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return raw.lower() in ("1", "true", "yes", "on")
        raise SettingsError(key, f"expected a boolean, got {raw!r}")
    if kind is int:
        if isinstance(raw, bool):
            raise SettingsError(key, f"expected an integer, got {raw!r}")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, str):
            try:
                return int(raw.strip())
            except ValueError:
                pass
        raise SettingsError(key, f"expected an integer, got {raw!r}")
    if kind is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw.strip())
            except ValueError:
                pass
        raise SettingsError(key, f"expected a number, got {raw!r}")
    if isinstance(default, Path):
        if isinstance(raw, (str, Path)) and str(raw):
            return Path(raw).expanduser()
        raise SettingsError(key, f"expected a path, got {raw!r}")
    if kind is str:
        if isinstance(raw, str):
            return raw
        raise SettingsError(key, f"expected a string, got {raw!r}")
    raise SettingsError(key, "cannot be set")


def _check(s: Settings) -> None:
    if not 0 < s.port < 65536:
        raise SettingsError("port", f"must be 1..65535, got {s.port}")
    if s.workers < 1:
        raise SettingsError("workers", f"must be at least 1, got {s.workers}")
    if s.auth not in AUTH_MODES:
        raise SettingsError("auth", f"must be one of {', '.join(AUTH_MODES)}, got {s.auth!r}")
    if s.image_size_cap < 1:
        raise SettingsError("image_size_cap", "must be positive")
    if s.max_uploads < 1:
        raise SettingsError("max_uploads", "must be at least 1")
    if s.max_json_body < 1024:
        raise SettingsError("max_json_body", "must be at least 1024")
    if s.max_connections < 1:
        raise SettingsError("max_connections", "must be at least 1")
    if s.listen_backlog < 1:
        raise SettingsError("listen_backlog", "must be at least 1")
    if s.keepalive_timeout < 1:
        raise SettingsError("keepalive_timeout", "must be at least 1 second")
    if s.max_request_head < 16 * KiB:
        raise SettingsError("max_request_head", "must be at least 16 KiB")
    if not 4 * KiB <= s.chunk_size <= 256 * MiB:
        raise SettingsError("chunk_size", "must be between 4 KiB and 256 MiB")
    if s.cache_max_size < 0:
        raise SettingsError("cache_max_size", "must not be negative")
    if not 0 < s.cache_high_watermark <= 1:
        raise SettingsError("cache_high_watermark", "must be in (0, 1]")
    if not 0 <= s.cache_low_watermark < s.cache_high_watermark:
        raise SettingsError("cache_low_watermark", "must be in [0, cache_high_watermark)")
    for key in ("prune_interval", "clean_interval", "prefetch_interval", "stale_temp_age", "upstream_timeout",
                "edge_auth_ttl"):
        if getattr(s, key) < 0:
            raise SettingsError(key, "must not be negative")
    if s.prefetch_concurrency < 1:
        raise SettingsError("prefetch_concurrency", "must be at least 1")
    if s.upstream_retries < 0:
        raise SettingsError("upstream_retries", "must not be negative")
    if not 0 <= s.readahead_chunks <= 64:
        raise SettingsError("readahead_chunks", "must be in 0 .. 64")
    if s.audit_bytes_per_second < 0:
        raise SettingsError("audit_bytes_per_second", "must not be negative")
    if s.lmdb_map_size < 16 * MiB:
        raise SettingsError("lmdb_map_size", "must be at least 16 MiB")
    if s.log_level not in ("critical", "error", "warning", "info", "debug", "trace"):
        raise SettingsError("log_level", f"unknown level {s.log_level!r}")
    if s.upstream_api and not (s.upstream_api.startswith(("http://", "https://")) and urlsplit(s.upstream_api).hostname):
        raise SettingsError("upstream_api", f"must be an http(s) URL such as http://central:9292, got {s.upstream_api!r}")
    _check_keystone(s)
    if s.store and "://" not in s.store:
        raise SettingsError("store", f"must be a URL such as file:///var/lib/imgproxy/images, got {s.store!r}")


def _check_keystone(s: Settings) -> None:
    for key in ("keystone_timeout", "token_cache_seconds"):
        if getattr(s, key) < 0:
            raise SettingsError(key, "must not be negative")
    if s.auth != "keystone":
        return
    if not (s.keystone_url.startswith(("http://", "https://")) and urlsplit(s.keystone_url).hostname):
        raise SettingsError("keystone_url", f"must be the http(s) URL of Keystone such as http://keystone:5000, "
                                            f"got {s.keystone_url!r}")
    if s.keystone_app_credential_id or s.keystone_app_credential_secret:
        if s.keystone_user:
            raise SettingsError("keystone_user", "give either a user or an application credential, not both")
        for key in ("keystone_app_credential_id", "keystone_app_credential_secret"):
            if not getattr(s, key):
                raise SettingsError(key, "is needed with an application credential")
        return
    for key in ("keystone_user", "keystone_password", "keystone_project"):
        if not getattr(s, key):
            raise SettingsError(key, "is needed with auth = \"keystone\" (or an application credential)")


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise SettingsError("config", f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError("config", f"{path} is not valid TOML: {exc}") from exc
    # Accept both a flat file and one with an [imgproxy] table.
    table = doc.get("imgproxy", doc)
    if not isinstance(table, dict):
        raise SettingsError("imgproxy", "must be a table")
    return table



def load_settings(
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build and validate the settings; raise :class:`SettingsError` on any bad value."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if config_file is None and environ.get("IMGPROXY_CONFIG"):
        config_file = environ["IMGPROXY_CONFIG"]
    if config_file is not None:
        for key, raw in _read_file(Path(config_file)).items():
            if key in _FIELDS:
                values[key] = _convert(key, raw)
            elif isinstance(raw, dict):
                extra[key] = raw  # sections for backends, e.g. [s3]
            else:
                raise SettingsError(key, "unknown setting")
    for name, raw in environ.items():
        if not name.startswith("IMGPROXY_") or name == "IMGPROXY_CONFIG":
            continue
        key = name[len("IMGPROXY_"):].lower()
        if key in _FIELDS:
            values[key] = _convert(key, raw)
        elif name in _STORE_SECRETS:
            table, option = _STORE_SECRETS[name]
            extra[table] = {**extra.get(table, {}), option: raw}
    for key, raw in (overrides or {}).items():
        if raw is None:
            continue
        if key not in _FIELDS:
            raise SettingsError(key, "unknown setting")
        values[key] = _convert(key, raw)
    settings = Settings(**values, extra=extra)
    _check(settings)
    return settings
