"""Read-only figures about the cache, for the admin API: what is cached, and the counters.

Each function takes a read transaction; their cost grows with what the cache holds, so
they run on a worker thread, never on the event loop.
"""

from __future__ import annotations

from typing import Any

import lmdb

from .index import ChunkIndex
from .manifest import ManifestTable

__all__ = ["COUNTERS", "cached_images", "counters", "image_row"]

# Persisted counters, summed over all processes sharing the cache.
COUNTERS = ("hits", "misses", "bytes_upstream", "bytes_served", "coalesced_waiters", "fills", "fill_failures",
            "uncached_fills", "upstream_retries", "corrupt_chunks", "collisions", "evicted_chunks",
            "evicted_bytes", "tail_stalls", "corrupt_store_ranges")


def image_row(txn: lmdb.Transaction, manifests: ManifestTable, index: ChunkIndex,
              image_id: str) -> dict[str, Any] | None:
    """One image's figures: ``image_id``, ``hits``, ``last_accessed``, ``last_modified``
    (epoch seconds, 0 if never), ``size`` (cached bytes), ``image_size``, ``complete``; None
    when the cache has no manifest for it. One pass over its chunks."""
    manifest = manifests.get(txn, image_id)
    if manifest is None:
        return None
    cached = 0
    for i, address in enumerate(manifest.chunks):
        if address is None or i in manifest.collisions:
            continue
        rec = index.get(txn, address)
        if rec is not None and rec.present:
            cached += manifest.chunk_range(i).length
    hits, access, modified = index.image_info(txn, image_id)
    return {"image_id": image_id, "hits": hits, "last_accessed": access / 1e6, "last_modified": modified / 1e6,
            "size": cached, "image_size": manifest.size, "complete": cached == manifest.size}


def cached_images(txn: lmdb.Transaction, manifests: ManifestTable, index: ChunkIndex) -> list[dict[str, Any]]:
    """:func:`image_row` of every image with cached bytes."""
    rows = (image_row(txn, manifests, index, image_id) for image_id in manifests.image_ids(txn))
    return [row for row in rows if row is not None and (row["size"] > 0 or row["image_size"] == 0)]


def counters(txn: lmdb.Transaction, index: ChunkIndex) -> dict[str, int]:
    """``bytes_cached``, ``chunks`` and every name in :data:`COUNTERS`."""
    out = {"bytes_cached": index.meta(txn, "total"), "chunks": index.meta(txn, "count")}
    for name in COUNTERS:
        out[name] = index.meta(txn, f"stat:{name}")
    return out
