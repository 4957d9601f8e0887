"""Building the settings: defaults, the config file, ``IMGPROXY_*`` variables and overrides, checked."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from backends import StoreConfig, check_store

from .model import AUTH_MODES, IMPORT_METHODS, KiB, MiB, Settings, SettingsError

__all__ = ["load_settings"]


_FIELDS = {f.name: f for f in dataclasses.fields(Settings) if f.name not in ("extra", "stores")}

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
    if kind is tuple:
        if isinstance(raw, str):
            raw = [part.strip() for part in raw.split(",") if part.strip()]
        if isinstance(raw, (list, tuple)) and all(isinstance(item, str) for item in raw):
            return tuple(raw)
        raise SettingsError(key, f"expected a list of strings, got {raw!r}")
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
                "edge_auth_ttl", "scrub_time", "reap_interval"):
        if getattr(s, key) < 0:
            raise SettingsError(key, "must not be negative")
    if s.prefetch_concurrency < 1:
        raise SettingsError("prefetch_concurrency", "must be at least 1")
    if s.upstream_retries < 0:
        raise SettingsError("upstream_retries", "must not be negative")
    if not 0 <= s.readahead_chunks <= 64:
        raise SettingsError("readahead_chunks", "must be in 0 .. 64")
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


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise SettingsError("config", f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError("config", f"{path} is not valid TOML: {exc}") from exc
    # Accept both a flat file and one with an [imgproxy] table (store tables beside it).
    table = doc.get("imgproxy", doc)
    if not isinstance(table, dict):
        raise SettingsError("imgproxy", "must be a table")
    if table is not doc:
        table = {**{k: v for k, v in doc.items() if k != "imgproxy" and isinstance(v, dict)}, **table}
    return table


_STORE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", re.ASCII)
_STORE_KEYS = ("url", "description", "weight")
_STORE_ENV = "IMGPROXY_STORES_"


def _env_options(names: list[str], environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``IMGPROXY_STORES_<NAME>_<OPTION>`` variables by store (names upper-cased, '-' as '_');
    values are strings, meant for secrets. A variable that names no store is an error."""
    found: dict[str, dict[str, str]] = {}
    for var, value in environ.items():
        if not var.startswith(_STORE_ENV):
            continue
        rest = var[len(_STORE_ENV):]
        matches = [n for n in names if rest.startswith(n.upper().replace("-", "_") + "_")]
        if not matches:
            raise SettingsError(var, "names no store of the [stores.NAME] tables")
        name = max(matches, key=len)
        found.setdefault(name, {})[rest[len(name) + 1:].lower()] = value
    return found


def _store_config(name: str, table: Any, env: Mapping[str, str]) -> StoreConfig:
    key = f"stores.{name}"
    if not _STORE_ID.fullmatch(name) or name.startswith("os_glance"):
        raise SettingsError(key, "a store id is 1 to 64 letters, digits, '-' or '_' (not os_glance...)")
    if not isinstance(table, dict):
        raise SettingsError(key, "must be a table with at least url")
    table = {**table, **env}
    url = table.get("url")
    if not isinstance(url, str) or "://" not in url:
        raise SettingsError(f"{key}.url", f"must be a store URL such as s3://bucket/images, got {url!r}")
    description = table.get("description", "")
    if not isinstance(description, str):
        raise SettingsError(f"{key}.description", "must be a string")
    weight = table.get("weight", 0)
    if isinstance(weight, bool) or not isinstance(weight, int):
        raise SettingsError(f"{key}.weight", f"must be an integer, got {weight!r}")
    options = {k: v for k, v in table.items() if k not in _STORE_KEYS}
    config = StoreConfig(name, url, options, description, weight)
    try:
        check_store(config)
    except ValueError as exc:
        raise SettingsError(key, str(exc)) from None
    return config


def _stores(s: Settings, tables: Any, environ: Mapping[str, str]) -> tuple[dict[str, StoreConfig], str]:
    """The configured stores and the default's id, checked (errors name the key)."""
    if tables is None:
        stray = sorted(var for var in environ if var.startswith(_STORE_ENV))
        if stray:
            raise SettingsError(stray[0], "names no store: there are no [stores.NAME] tables")
        # The shorthand: one store, called by its kind, with that kind's table as options.
        url = s.store_url
        scheme = urlsplit(url).scheme
        config = StoreConfig(scheme, url, dict(s.extra.get(scheme, {})),
                             f"The {scheme} store that keeps uploaded image data.")
        try:
            check_store(config)
        except ValueError as exc:
            raise SettingsError("store" if str(exc).startswith("url") else scheme, str(exc)) from None
        if s.default_store not in ("", scheme):
            raise SettingsError("default_store", f"the only store is {scheme!r} (the store setting); "
                                                 "name others in [stores.NAME] tables")
        return {scheme: config}, scheme
    if s.store:
        raise SettingsError("store", "give either store (one store) or [stores.NAME] tables, not both")
    if not isinstance(tables, dict) or not tables:
        raise SettingsError("stores", "must hold one [stores.NAME] table per store")
    env = _env_options(list(tables), environ)
    stores = {name: _store_config(name, table, env.get(name, {})) for name, table in tables.items()}
    default = s.default_store
    if not default:
        if len(stores) > 1:
            raise SettingsError("default_store", f"must name the store uploads go to, one of {', '.join(stores)}")
        default = next(iter(stores))
    if default not in stores:
        raise SettingsError("default_store", f"{default!r} is not one of the stores ({', '.join(stores)})")
    return stores, default



def load_settings(
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build and validate the settings; raise :class:`SettingsError` on any bad value."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    store_tables: Any = None
    if config_file is None and environ.get("IMGPROXY_CONFIG"):
        config_file = environ["IMGPROXY_CONFIG"]
    if config_file is not None:
        for key, raw in _read_file(Path(config_file)).items():
            if key in _FIELDS:
                values[key] = _convert(key, raw)
            elif key == "stores":
                store_tables = raw
            elif isinstance(raw, dict):
                extra[key] = raw  # sections for backends, e.g. [s3]
            else:
                raise SettingsError(key, "unknown setting")
    for name, raw in environ.items():
        if not name.startswith("IMGPROXY_") or name == "IMGPROXY_CONFIG" or name.startswith(_STORE_ENV):
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
    stores, default = _stores(settings, store_tables, environ)
    return dataclasses.replace(settings, stores=stores, default_store=default)
