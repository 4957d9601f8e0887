"""Checking a built :class:`~.model.Settings` once, before the service starts: every range,
choice and URL, and the tables the service reads itself; errors name the key."""

from __future__ import annotations

from urllib.parse import urlsplit

from .model import AUTH_MODES, IMPORT_METHODS, KiB, MiB, Settings, SettingsError

__all__ = ["check"]


def check(s: Settings) -> None:
    """Raise :class:`SettingsError`, naming the key, for the first bad value of ``s``."""
    if not 0 < s.port < 65536:
        raise SettingsError("port", f"must be 1..65535, got {s.port}")
    if s.workers < 1:
        raise SettingsError("workers", f"must be at least 1, got {s.workers}")
    if not 0 <= s.sendfile_threads <= 64:
        raise SettingsError("sendfile_threads", f"must be in 0 .. 64, got {s.sendfile_threads}")
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
                "edge_auth_ttl", "scrub_time", "reap_interval"):
        if getattr(s, key) < 0:
            raise SettingsError(key, "must not be negative")
    if s.prefetch_concurrency < 1:
        raise SettingsError("prefetch_concurrency", "must be at least 1")
    if s.upstream_retries < 0:
        raise SettingsError("upstream_retries", "must not be negative")
    if not 0 <= s.readahead_chunks <= 64:
        raise SettingsError("readahead_chunks", "must be in 0 .. 64")
    if not 0 <= s.fill_read_chunks <= 64:
        raise SettingsError("fill_read_chunks", "must be in 0 .. 64 (0: each store's own)")
    if not 1 <= s.max_fills <= 4096:
        raise SettingsError("max_fills", "must be in 1 .. 4096")
    if s.fill_memory < s.chunk_size:
        raise SettingsError("fill_memory", f"must be at least chunk_size ({s.chunk_size} bytes): a fill holds one chunk")
    if s.audit_bytes_per_second < 0:
        raise SettingsError("audit_bytes_per_second", "must not be negative")
    if s.lmdb_map_size < 16 * MiB:
        raise SettingsError("lmdb_map_size", "must be at least 16 MiB")
    if s.log_level not in ("critical", "error", "warning", "info", "debug", "trace"):
        raise SettingsError("log_level", f"unknown level {s.log_level!r}")
    if s.log_format not in ("text", "json"):
        raise SettingsError("log_format", f"must be text or json, got {s.log_format!r}")
    if s.metrics_listen:
        host, sep, port = s.metrics_listen.rpartition(":")
        if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
            raise SettingsError("metrics_listen", f"must be host:port such as 127.0.0.1:9393, got {s.metrics_listen!r}")
    if s.upstream_api and not (s.upstream_api.startswith(("http://", "https://")) and urlsplit(s.upstream_api).hostname):
        raise SettingsError("upstream_api", f"must be an http(s) URL such as http://central:9292, got {s.upstream_api!r}")
    unknown = sorted(set(s.enabled_import_methods) - set(IMPORT_METHODS))
    if unknown:
        raise SettingsError("enabled_import_methods", f"unknown {', '.join(unknown)} (known: {', '.join(IMPORT_METHODS)})")
    if s.worker_self_reference_url and not s.worker_self_reference_url.startswith(("http://", "https://")):
        raise SettingsError("worker_self_reference_url", f"must be an http(s) URL, got {s.worker_self_reference_url!r}")
    _check_tables(s)
    _check_keystone(s)
    if s.store and "://" not in s.store:
        raise SettingsError("store", f"must be a URL such as file:///var/lib/imgproxy/images, got {s.store!r}")


def _check_tables(s: Settings) -> None:
    """Tables the service reads itself (not a store's): validated here, once."""
    from ..images.remote_glance import GlanceRegions
    from ..urlfilter import ImportFilter

    for table, parse in (("import_filtering_opts", ImportFilter.from_mapping),
                         ("glance_download", GlanceRegions.from_mapping)):
        raw = s.extra.get(table)
        if raw is None:
            continue
        try:
            parse(raw)
        except ValueError as exc:
            raise SettingsError(table, str(exc)) from None


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
