"""Building the settings: defaults, the config file, ``IMGPROXY_*`` variables and overrides, checked."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checks import check
from .model import Settings, SettingsError
from .stores import STORE_ENV, configured_stores

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
        if not name.startswith("IMGPROXY_") or name == "IMGPROXY_CONFIG" or name.startswith(STORE_ENV):
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
    stores, default = configured_stores(settings, store_tables, environ)
    return dataclasses.replace(settings, stores=stores, default_store=default)
