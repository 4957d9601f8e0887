"""Chunks the pruner must not evict while a reader or an ingest uses them."""

from __future__ import annotations

import threading
from collections import Counter

__all__ = ["Pins"]


class Pins:
    """Chunks the pruner must not evict (being read, or written by an uncommitted ingest).

    Pins are per process: another process's pruner may still remove the file, which a
    reader sees as a miss (a chunk is read whole once opened, so never half-sent).
    Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pins: Counter[bytes] = Counter()

    def add(self, address: bytes) -> None:
        with self._lock:
            self._pins[address] += 1

    def remove(self, address: bytes) -> None:
        with self._lock:
            self._pins[address] -= 1
            if self._pins[address] <= 0:
                del self._pins[address]

    def snapshot(self) -> frozenset[bytes]:
        with self._lock:
            return frozenset(self._pins)
