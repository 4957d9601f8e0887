"""Read-only figures about the cache, for the admin API: what is cached, and the counters.

Each function takes a read transaction; their cost grows with what the cache holds, so
they run on a worker thread, never on the event loop.
"""

from __future__ import annotations

from typing import Any

import lmdb

from .index import ChunkIndex
from .manifest import ManifestTable

__all__ = ["COUNTERS", "cached_images", "counters"]

# Persisted counters, summed over all processes sharing the cache.
COUNTERS = ("hits", "misses", "bytes_upstream", "bytes_served", "coalesced_waiters", "fills", "fill_failures",
            "uncached_fills", "upstream_retries", "corrupt_chunks", "collisions", "evicted_chunks",
            "evicted_bytes", "tail_stalls", "corrupt_store_ranges")


def cached_images(txn: lmdb.Transaction, manifests: ManifestTable, index: ChunkIndex) -> list[dict[str, Any]]:
    """Images with cached bytes: ``image_id``, ``hits``, ``last_accessed``, ``last_modified``
    (epoch seconds, 0 if never), ``size`` (cached bytes), ``image_size``, ``complete``."""
    out = []
    for image_id in manifests.image_ids(txn):
        manifest = manifests.get(txn, image_id)
        if manifest is None:
            continue
        cached = 0
        for i, address in enumerate(manifest.chunks):
            if address is None or i in manifest.collisions:
                continue
            rec = index.get(txn, address)
            if rec is not None and rec.present:
                cached += manifest.chunk_range(i).length
        if cached == 0 and manifest.size > 0:
            continue
        hits, access, modified = index.image_info(txn, image_id)
        out.append({"image_id": image_id, "hits": hits, "last_accessed": access / 1e6,
                    "last_modified": modified / 1e6, "size": cached, "image_size": manifest.size,
                    "complete": cached == manifest.size})
    return out


def counters(txn: lmdb.Transaction, index: ChunkIndex) -> dict[str, int]:
    """``bytes_cached``, ``chunks`` and every name in :data:`COUNTERS`."""
    out = {"bytes_cached": index.meta(txn, "total"), "chunks": index.meta(txn, "count")}
    for name in COUNTERS:
        out[name] = index.meta(txn, f"stat:{name}")
    return out
