"""Eviction: keep the cached bytes under the size limit, least recently used first.

Walks the ``lru`` index from its oldest entry and stops as soon as enough is freed,
so a run costs what it evicts, not what the cache holds. Pinned chunks (being read,
or written by an uncommitted ingest) are skipped. Index first, then files: a reader
that finds the file gone treats it as a miss; a file left behind by a crash is adopted
or removed by the cleaner. Until a file is gone its bytes still count as used, so that
the disk never holds more than the bound.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import lmdb

from .index import ChunkIndex

__all__ = ["Drop", "PruneResult", "evict"]

log = logging.getLogger("imgproxy.cache")

_BATCH = 512  # chunks per write transaction

# Runs ``fn`` in a write transaction (it marks chunks absent and returns them), then unlinks
# their files; returns how many it unlinked. The bytes stay counted as used until then.
Drop = Callable[[Callable[[lmdb.Transaction], list[bytes]]], int]


@dataclass(frozen=True)
class PruneResult:
    files: int = 0
    bytes: int = 0


def evict(env: lmdb.Environment, index: ChunkIndex, pinned: frozenset[bytes], *,
          above: int, down_to: int, drop: Drop) -> PruneResult:
    """If more than ``above`` bytes are cached, evict LRU chunks until at most ``down_to`` remain.

    Sync and blocking: run it in a worker thread (it scans there; ``drop`` marks the chunks
    absent in a write transaction and unlinks their files). ``above=-1, down_to=0`` empties
    the cache.
    """
    with env.begin() as txn:
        total = index.meta(txn, "total")
    if total <= above:
        return PruneResult()
    files = freed = 0
    skip: set[bytes] = set()
    while total - freed > down_to:
        victims: list[tuple[int, bytes]] = []
        need = total - freed - down_to
        with env.begin() as txn:
            for access, address in index.lru(txn):
                if address in pinned or address in skip:
                    continue
                rec = index.get(txn, address)
                victims.append((access, address))
                need -= rec.size if rec else 0
                if need <= 0 or len(victims) >= _BATCH:
                    break
        if not victims:
            break

        def mark(txn: lmdb.Transaction) -> list[bytes]:
            nonlocal freed
            removed = []
            for access, address in victims:
                # if_access: skip a chunk another process read since we looked.
                size = index.mark_absent(txn, address, if_access=access)
                if size:
                    freed += size
                    removed.append(address)
                else:
                    skip.add(address)
            return removed

        files += drop(mark)
    if files:
        log.info("pruned %d chunks (%d bytes)", files, freed)
    return PruneResult(files, freed)
