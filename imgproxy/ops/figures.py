"""Cache-wide figures: the cache's counters and sizes (LMDB, all processes), and LMDB's own size.

What ``GET /v2/cache/stats``, ``GET /metrics`` and ``GET /status`` report, read the same
way so they agree. Each read is also left in ``<metrics dir>/cache-figures.json`` for the
``metrics_listen`` server, which runs in the CLI's process and must not open the LMDB
environment a worker of the same process may hold (LMDB forbids two opens per process).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lmdb

from cache import ImageCache

__all__ = ["cache_figures", "cache_limits", "load_figures", "save_figures"]

FIGURES_FILE = "cache-figures.json"


def cache_limits(cache: ImageCache) -> dict[str, int]:
    return {
        "max_size": cache.max_size,
        "high_watermark_bytes": int(cache.high_watermark * cache.max_size),
        "low_watermark_bytes": int(cache.low_watermark * cache.max_size),
        "chunk_size": cache.chunk_size,
    }


def cache_figures(cache: ImageCache, env: lmdb.Environment) -> dict[str, int]:
    """:meth:`ImageCache.stats`, the limits and LMDB's sizes. Sync, and it flushes this
    process's batched index writes: call it off the event loop."""
    figures = dict(cache.stats())
    figures.update(cache_limits(cache))
    info, stat = env.info(), env.stat()
    figures["lmdb_map_bytes"] = int(info["map_size"])
    figures["lmdb_used_bytes"] = int(info["last_pgno"] + 1) * int(stat["psize"])
    try:
        figures["lmdb_file_bytes"] = os.stat(Path(env.path()) / "data.mdb").st_size
    except OSError:
        pass
    return figures


def save_figures(directory: Path, figures: dict[str, Any]) -> None:
    """Replace the snapshot atomically (a reader never sees half of it)."""
    tmp = directory / f".{FIGURES_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(figures))
    os.replace(tmp, directory / FIGURES_FILE)


def load_figures(directory: Path) -> dict[str, Any]:
    """The last snapshot, or nothing before the first."""
    try:
        doc = json.loads((directory / FIGURES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}
