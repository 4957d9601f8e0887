"""The chunk index in LMDB: size, reference count, last access and presence of each chunk.

Named databases:
- ``chunks``: address -> ``<QIQB`` (size, refs, last access in µs, present). ``refs`` counts
  the manifests whose (distinct) addresses include the chunk; ``present`` says a chunk
  file exists. A record lives while it is referenced or present.
- ``lru``: ``>Q`` last access + address -> b"" for present chunks, oldest first: the
  pruner walks it from the start, so eviction costs what it evicts.
- ``cache_meta``: ``total``/``count`` of present chunks and persisted stats counters.
- ``cache_images``: image id -> ``<QQQ`` (hits, last accessed µs, last modified µs).

A cached read writes nothing to LMDB: accesses, hits, chunks that became present or
were dropped, and stats deltas are batched in memory (:class:`PendingWrites`) and
applied by :meth:`ChunkIndex.flush` in one transaction. Losing a batch (crash) is
harmless: the cleaner adopts chunk files the index does not know.

Thread safety: :class:`PendingWrites` is guarded by its own lock (flush runs in a worker
thread). Each method that takes ``txn`` runs inside the caller's transaction.
"""

from __future__ import annotations

import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import lmdb

__all__ = ["ChunkIndex", "ChunkRecord", "PendingWrites", "now_us"]

_REC = struct.Struct("<QIQB")
_U64 = struct.Struct("<Q")
_LRU = struct.Struct(">Q")
_IMG = struct.Struct("<QQQ")
KNOWN_MAX = 65536


def now_us() -> int:
    return int(time.time() * 1_000_000)


@dataclass
class ChunkRecord:
    size: int
    refs: int
    access: int
    present: bool

    def pack(self) -> bytes:
        return _REC.pack(self.size, self.refs, self.access, int(self.present))

    @classmethod
    def unpack(cls, raw: bytes) -> "ChunkRecord":
        size, refs, access, present = _REC.unpack(raw)
        return cls(size, refs, access, bool(present))


@dataclass
class _Batch:
    accessed: dict[bytes, int] = field(default_factory=dict)
    presence: dict[bytes, int | None] = field(default_factory=dict)  # size, or None = dropped
    hits: Counter[str] = field(default_factory=Counter)
    image_access: dict[str, int] = field(default_factory=dict)
    image_modified: dict[str, int] = field(default_factory=dict)
    learned: dict[tuple[str, int], bytes | None] = field(default_factory=dict)  # None = collision
    counters: Counter[str] = field(default_factory=Counter)


def _new_bytes(batch: _Batch) -> int:
    return sum(s for s in batch.presence.values() if s)


class PendingWrites:
    """Index changes waiting for the next flush. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batch = _Batch()
        # Bytes promised to chunk writes in progress, and bytes of a batch being flushed
        # (out of the batch, not yet in the LMDB total): both count as used, so that
        # concurrent writers cannot all pass the room check and overshoot the bound.
        self._reserved = 0
        self._in_flush = 0
        # Addresses learned by fills, kept past the flush: readers hold manifests that
        # predate it. Bounded; the oldest are forgotten first.
        self._known: dict[tuple[str, int], bytes | None] = {}

    def touch(self, address: bytes, when: int | None = None) -> None:
        with self._lock:
            self._batch.accessed[address] = when or now_us()

    def present(self, address: bytes, size: int) -> None:
        with self._lock:
            self._batch.presence[address] = size
            self._batch.accessed[address] = now_us()

    def dropped(self, address: bytes) -> None:
        with self._lock:
            self._batch.presence[address] = None
            self._batch.accessed.pop(address, None)

    def hit(self, image_id: str, count: bool = True) -> None:
        with self._lock:
            if count:
                self._batch.hits[image_id] += 1
            self._batch.image_access[image_id] = now_us()

    def modified(self, image_id: str) -> None:
        with self._lock:
            self._batch.image_modified[image_id] = now_us()

    def learn(self, image_id: str, index: int, address: bytes | None) -> None:
        """Chunk ``index`` of ``image_id`` has ``address`` (``None``: it collides, never cache it)."""
        with self._lock:
            self._batch.learned[(image_id, index)] = address
            self._known[(image_id, index)] = address
            if len(self._known) > KNOWN_MAX:
                del self._known[next(iter(self._known))]

    def learned(self, image_id: str, index: int) -> bytes | None:
        with self._lock:
            return self._known.get((image_id, index))

    def collides(self, image_id: str, index: int) -> bool:
        with self._lock:
            key = (image_id, index)
            return key in self._known and self._known[key] is None

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._batch.counters[name] += n

    def counters(self) -> Counter[str]:
        with self._lock:
            return Counter(self._batch.counters)

    def pending_bytes(self) -> int:
        with self._lock:
            return self._pending_locked()

    def _pending_locked(self) -> int:
        return _new_bytes(self._batch) + self._reserved + self._in_flush

    def reserve(self, size: int, room: int) -> bool:
        """Promise ``size`` bytes to a chunk write if they fit in ``room`` (the bound minus the
        committed total) with everything pending; the writer calls :meth:`release` when done."""
        with self._lock:
            if self._pending_locked() + size > room:
                return False
            self._reserved += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self._reserved -= size

    @contextmanager
    def holding(self) -> Iterator[Callable[[int], None]]:
        """``hold(n)``: count ``n`` more bytes as used until the block ends.

        An eviction commits the index (the total drops) before it unlinks the files; the
        freed bytes are held from inside its transaction until the files are gone, so that a
        concurrent write cannot take room the old files still fill on disk."""
        held = 0

        def hold(size: int) -> None:
            nonlocal held
            if size > 0:
                with self._lock:
                    self._reserved += size
                    held += size

        try:
            yield hold
        finally:
            with self._lock:
                self._reserved -= held

    def forget_image(self, image_id: str) -> None:
        with self._lock:
            b = self._batch
            b.hits.pop(image_id, None)
            b.image_access.pop(image_id, None)
            b.image_modified.pop(image_id, None)
            for key in [k for k in b.learned if k[0] == image_id]:
                del b.learned[key]
            for key in [k for k in self._known if k[0] == image_id]:
                del self._known[key]

    def take(self) -> _Batch:
        """Take the batch for a flush; call :meth:`flushed` or :meth:`give_back` after."""
        with self._lock:
            batch, self._batch = self._batch, _Batch()
            self._in_flush += _new_bytes(batch)
        return batch

    def flushed(self, batch: _Batch) -> None:
        with self._lock:
            self._in_flush -= _new_bytes(batch)

    def give_back(self, batch: _Batch) -> None:
        """Re-queue a batch whose flush failed (newer values win)."""
        with self._lock:
            self._in_flush -= _new_bytes(batch)
            cur = self._batch
            for k, v in batch.accessed.items():
                cur.accessed.setdefault(k, v)
            for k2, p in batch.presence.items():
                cur.presence.setdefault(k2, p)
            cur.hits.update(batch.hits)
            for k3, t in batch.image_access.items():
                cur.image_access.setdefault(k3, t)
            for k3, t in batch.image_modified.items():
                cur.image_modified.setdefault(k3, t)
            for k4, a in batch.learned.items():
                cur.learned.setdefault(k4, a)
            cur.counters.update(batch.counters)


class ChunkIndex:
    """Record operations on the chunk index, each inside the caller's transaction."""

    def __init__(self, env: lmdb.Environment) -> None:
        self.env = env
        self.chunks_db = env.open_db(b"chunks")
        self.lru_db = env.open_db(b"lru")
        self.meta_db = env.open_db(b"cache_meta")
        self.images_db = env.open_db(b"cache_images")

    # -- records ---------------------------------------------------------------

    def get(self, txn: lmdb.Transaction, address: bytes) -> ChunkRecord | None:
        raw = txn.get(address, db=self.chunks_db)
        return None if raw is None else ChunkRecord.unpack(bytes(raw))

    def _put(self, txn: lmdb.Transaction, address: bytes, rec: ChunkRecord, old: ChunkRecord | None) -> None:
        if old is not None and old.present and (not rec.present or old.access != rec.access):
            txn.delete(_LRU.pack(old.access) + address, db=self.lru_db)
        if rec.present and (old is None or not old.present or old.access != rec.access):
            txn.put(_LRU.pack(rec.access) + address, b"", db=self.lru_db)
        if rec.refs == 0 and not rec.present:
            txn.delete(address, db=self.chunks_db)
        else:
            txn.put(address, rec.pack(), db=self.chunks_db)

    def _add_meta(self, txn: lmdb.Transaction, key: bytes, delta: int) -> None:
        raw = txn.get(key, db=self.meta_db)
        value = max(0, (_U64.unpack(raw)[0] if raw else 0) + delta)
        txn.put(key, _U64.pack(value), db=self.meta_db)

    def meta(self, txn: lmdb.Transaction, key: str) -> int:
        raw = txn.get(key.encode(), db=self.meta_db)
        return _U64.unpack(raw)[0] if raw else 0

    def set_meta(self, txn: lmdb.Transaction, key: str, value: int) -> None:
        txn.put(key.encode(), _U64.pack(max(0, value)), db=self.meta_db)

    def mark_present(self, txn: lmdb.Transaction, address: bytes, size: int, access: int) -> bool:
        """Record that a chunk file exists; return True if it was not present before."""
        old = self.get(txn, address)
        rec = ChunkRecord(size, 0, access, True) if old is None else ChunkRecord(size, old.refs, max(old.access, access), True)
        self._put(txn, address, rec, old)
        if old is None or not old.present:
            self._add_meta(txn, b"total", size)
            self._add_meta(txn, b"count", 1)
            return True
        if old.size != size:
            self._add_meta(txn, b"total", size - old.size)
        return False

    def mark_absent(self, txn: lmdb.Transaction, address: bytes, *, if_access: int | None = None) -> int:
        """Record that a chunk file is gone; return the bytes freed (0 if it was not present).

        With ``if_access``, do nothing if the chunk was accessed since (another process).
        """
        old = self.get(txn, address)
        if old is None or not old.present or (if_access is not None and old.access != if_access):
            return 0
        self._put(txn, address, ChunkRecord(old.size, old.refs, old.access, False), old)
        self._add_meta(txn, b"total", -old.size)
        self._add_meta(txn, b"count", -1)
        return old.size

    def touch(self, txn: lmdb.Transaction, address: bytes, access: int) -> None:
        old = self.get(txn, address)
        if old is not None and old.present and access > old.access:
            self._put(txn, address, ChunkRecord(old.size, old.refs, access, True), old)

    def incref(self, txn: lmdb.Transaction, addresses: Iterable[tuple[bytes, int]]) -> None:
        for address, size in addresses:
            old = self.get(txn, address)
            rec = ChunkRecord(size, 1, 0, False) if old is None else ChunkRecord(old.size, old.refs + 1, old.access, old.present)
            self._put(txn, address, rec, old)

    def decref(self, txn: lmdb.Transaction, addresses: Iterable[bytes]) -> list[bytes]:
        """Drop one reference each; return the present chunks nothing references any more."""
        orphans = []
        for address in addresses:
            old = self.get(txn, address)
            if old is None:
                continue
            rec = ChunkRecord(old.size, max(0, old.refs - 1), old.access, old.present)
            self._put(txn, address, rec, old)
            if rec.refs == 0 and rec.present:
                orphans.append(address)
        return orphans

    def lru(self, txn: lmdb.Transaction) -> Iterator[tuple[int, bytes]]:
        """Present chunks, least recently used first: (last access, address)."""
        for key in txn.cursor(db=self.lru_db).iternext(keys=True, values=False):
            key = bytes(key)
            yield _LRU.unpack_from(key)[0], key[_LRU.size:]

    def records(self, txn: lmdb.Transaction, start: bytes = b"") -> Iterator[tuple[bytes, ChunkRecord]]:
        cur = txn.cursor(db=self.chunks_db)
        if not cur.set_range(start):
            return
        for key, raw in cur.iternext():
            yield bytes(key), ChunkRecord.unpack(bytes(raw))

    # -- per-image cache info --------------------------------------------------

    def image_info(self, txn: lmdb.Transaction, image_id: str) -> tuple[int, int, int]:
        raw = txn.get(image_id.encode(), db=self.images_db)
        return _IMG.unpack(raw) if raw else (0, 0, 0)

    def put_image_info(self, txn: lmdb.Transaction, image_id: str, hits: int, access: int, modified: int) -> None:
        txn.put(image_id.encode(), _IMG.pack(hits, access, modified), db=self.images_db)

    def delete_image_info(self, txn: lmdb.Transaction, image_id: str) -> None:
        txn.delete(image_id.encode(), db=self.images_db)

    # -- batches ---------------------------------------------------------------

    def apply(self, txn: lmdb.Transaction, batch: _Batch) -> None:
        """Apply a pending batch (all but ``learned``, which needs manifests) in ``txn``."""
        for address, size in batch.presence.items():
            if size is None:
                self.mark_absent(txn, address)
            else:
                self.mark_present(txn, address, size, batch.accessed.get(address) or now_us())
        for address, when in batch.accessed.items():
            if address not in batch.presence:
                self.touch(txn, address, when)
        images = set(batch.hits) | set(batch.image_access) | set(batch.image_modified)
        for image_id in images:
            hits, access, modified = self.image_info(txn, image_id)
            self.put_image_info(txn, image_id, hits + batch.hits.get(image_id, 0),
                                max(access, batch.image_access.get(image_id, 0)),
                                max(modified, batch.image_modified.get(image_id, 0)))
        for name, n in batch.counters.items():
            self._add_meta(txn, f"stat:{name}".encode(), n)
