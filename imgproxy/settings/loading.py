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

from .checks import check
from .model import Settings, SettingsError

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
    check(settings)
    stores, default = _stores(settings, store_tables, environ)
    return dataclasses.replace(settings, stores=stores, default_store=default)
