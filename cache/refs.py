"""Which chunks each image references: manifests and the index's reference counts, kept in step.

Every function runs inside the caller's write transaction and returns the addresses
whose files the caller removes after it commits (index first, then files: a reader that
finds a file gone treats it as a miss; a file left by a crash is adopted or removed by the
cleaner).
"""

from __future__ import annotations

import lmdb

from .index import ChunkIndex
from .manifest import Manifest, ManifestTable

__all__ = ["apply_learned", "evict_unshared", "forget", "record"]


def _sizes(manifest: Manifest) -> dict[bytes, int]:
    return {a: manifest.chunk_range(i).length for i, a in enumerate(manifest.chunks) if a is not None}


def record(txn: lmdb.Transaction, manifests: ManifestTable, index: ChunkIndex, image_id: str,
           manifest: Manifest) -> list[bytes]:
    """Store ``manifest`` (replacing any) and reference its chunks; return the chunks only
    the replaced manifest referenced (now marked absent)."""
    old = manifests.get(txn, image_id)
    manifests.put(txn, image_id, manifest)
    new = manifest.cacheable_addresses()
    before = old.cacheable_addresses() if old is not None else set()
    sizes = _sizes(manifest)
    index.incref(txn, ((a, sizes[a]) for a in new - before))
    return [a for a in index.decref(txn, before - new) if index.mark_absent(txn, a)]


def forget(txn: lmdb.Transaction, manifests: ManifestTable, index: ChunkIndex, image_id: str) -> list[bytes]:
    """Drop the image's manifest and cache info; return the chunks nothing references now."""
    removed = []
    old = manifests.delete(txn, image_id)
    if old is not None:
        removed = [a for a in index.decref(txn, old.cacheable_addresses()) if index.mark_absent(txn, a)]
    index.delete_image_info(txn, image_id)
    return removed


def evict_unshared(txn: lmdb.Transaction, manifests: ManifestTable, index: ChunkIndex, image_id: str,
                   pinned: frozenset[bytes]) -> tuple[list[bytes], int] | None:
    """Mark absent the image's cached chunks no other image shares (and not ``pinned``);
    return them and their bytes, or ``None`` if the image has no manifest."""
    manifest = manifests.get(txn, image_id)
    if manifest is None:
        return None
    removed, freed = [], 0
    for address in manifest.cacheable_addresses():
        rec = index.get(txn, address)
        if rec is not None and rec.present and rec.refs <= 1 and address not in pinned:
            freed += index.mark_absent(txn, address)
            removed.append(address)
    index.delete_image_info(txn, image_id)
    return removed, freed


def apply_learned(txn: lmdb.Transaction, manifests: ManifestTable, index: ChunkIndex,
                  learned: dict[tuple[str, int], bytes | None]) -> list[bytes]:
    """Write chunk addresses learned by fills (``None``: a collision) into the manifests;
    return the chunks nothing references now (marked absent).

    A fill may store its chunk after its image was forgotten (a read that began before the
    image was dropped): such a chunk belongs to no image, and goes unless another shares it.
    """
    by_image: dict[str, list[tuple[int, bytes | None]]] = {}
    for (image_id, i), address in learned.items():
        by_image.setdefault(image_id, []).append((i, address))
    orphans: list[bytes] = []
    for image_id, items in by_image.items():
        manifest = manifests.get(txn, image_id)
        if manifest is None:
            for _, address in items:
                rec = None if address is None else index.get(txn, address)
                if rec is not None and rec.present and rec.refs <= 0 and index.mark_absent(txn, address):
                    orphans.append(address)  # type: ignore[arg-type]
            index.delete_image_info(txn, image_id)
            continue
        before = manifest.cacheable_addresses()
        for i, address in items:
            if i >= len(manifest.chunks):
                continue
            if address is None:
                manifest = manifest.with_collision(i)
            elif manifest.chunks[i] is None:
                manifest = manifest.with_chunk(i, address)
        after = manifest.cacheable_addresses()
        manifests.put(txn, image_id, manifest)
        sizes = _sizes(manifest)
        index.incref(txn, ((a, sizes[a]) for a in after - before))
        index.decref(txn, before - after)
    return orphans
