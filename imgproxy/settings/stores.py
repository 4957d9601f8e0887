"""The configured stores: the ``[stores.NAME]`` tables (with ``IMGPROXY_STORES_<NAME>_<OPTION>``
variables for their secrets), or the one store the ``store`` setting names; checked, errors
naming the key."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from backends import StoreConfig, check_store

from .model import Settings, SettingsError

__all__ = ["STORE_ENV", "configured_stores"]

_STORE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", re.ASCII)
_STORE_KEYS = ("url", "description", "weight")
STORE_ENV = "IMGPROXY_STORES_"


def _env_options(names: list[str], environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``IMGPROXY_STORES_<NAME>_<OPTION>`` variables by store (names upper-cased, '-' as '_');
    values are strings, meant for secrets. A variable that names no store is an error."""
    found: dict[str, dict[str, str]] = {}
    for var, value in environ.items():
        if not var.startswith(STORE_ENV):
            continue
        rest = var[len(STORE_ENV):]
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


def configured_stores(s: Settings, tables: Any, environ: Mapping[str, str]) -> tuple[dict[str, StoreConfig], str]:
    """The configured stores and the default's id, checked (errors name the key)."""
    if tables is None:
        stray = sorted(var for var in environ if var.startswith(STORE_ENV))
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
