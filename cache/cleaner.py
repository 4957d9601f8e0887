"""The cleaner and the auditor: make disk and index agree, and find rotten chunks.

:func:`clean` is also the start-up recovery after a crash (``kill -9`` at any point):
- temp files of dead processes (or older than ``stale_age``) are removed;
- ``.part``/``.lock`` files of fills whose lock nobody holds are removed (the kernel
  released the lock of a dead owner);
- a chunk file the index does not list as present is verified and adopted if its
  digest matches (a fill or ingest that died before its index batch was flushed),
  removed otherwise;
- an index entry whose file is gone is marked absent;
- the ``total``/``count`` counters are recomputed;
- reader slots of dead processes are cleared from the LMDB lock table: a worker killed
  inside a read transaction otherwise keeps its slot, and the pages that reader saw can
  never be reused (the file grows with every write until the slots run out).
Every step is safe while other processes use the cache.

:func:`audit` re-hashes present chunks at a bounded rate, resuming where the last run
stopped, and drops corrupt ones (they are refilled from the store when next read).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from dataclasses import dataclass

import lmdb

from .chunks import ChunkStore, address_of
from .errors import CorruptChunk
from .fill import try_lock, unlock
from .index import ChunkIndex, now_us
from .txn import Write

__all__ = ["CleanResult", "AuditResult", "clean", "audit"]

log = logging.getLogger("imgproxy.cache")

_BATCH = 256


@dataclass(frozen=True)
class CleanResult:
    temp_files: int = 0
    fill_files: int = 0
    adopted: int = 0
    orphans_removed: int = 0
    missing: int = 0
    stale_readers: int = 0  # LMDB reader slots of dead processes, cleared


@dataclass(frozen=True)
class AuditResult:
    chunks: int = 0
    bytes: int = 0
    corrupt: int = 0
    missing: int = 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_temp(store: ChunkStore, stale_age: float) -> int:
    removed = 0
    now = time.time()
    for entry in os.scandir(store.tmp_dir):
        pid_text = entry.name.partition("-")[0]
        try:
            dead = pid_text.isdigit() and not _pid_alive(int(pid_text))
            if dead or now - entry.stat().st_mtime >= stale_age:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def _sweep_fills(store: ChunkStore) -> int:
    keys = {name.rsplit(".", 1)[0] for name in os.listdir(store.fills_dir)}
    removed = 0
    for key in keys:
        lock_path = store.fills_dir / f"{key}.lock"
        fd = try_lock(lock_path)
        if fd is None:
            continue  # a live fill
        part = store.fills_dir / f"{key}.part"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)
            removed += 1
        # A learned address left for other processes' fills; the index has it by now.
        for name in (f"{key}.addr", f"{key}.addr-tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(store.fills_dir / name)
        unlock(lock_path, fd)
    return removed


def _verify_file(path: str) -> tuple[bytes, int] | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return address_of(data), len(data)


def _adopt(index: ChunkIndex, verdicts: list[tuple[bytes, int]], txn: lmdb.Transaction) -> int:
    return sum(index.mark_present(txn, address, size, now_us()) for address, size in verdicts)


def clean(env: lmdb.Environment, index: ChunkIndex, store: ChunkStore, *, stale_age: float,
          write: Write) -> CleanResult:
    """Reconcile the cache directory and the index. Sync and blocking: run it in a thread
    (it scans and hashes there; its writes go through ``write``)."""
    stale_readers = env.reader_check()
    temp = _sweep_temp(store, stale_age)
    fills = _sweep_fills(store)
    adopted = removed = missing = 0
    unknown: list[tuple[bytes, str]] = []
    on_disk: set[bytes] = set()
    with env.begin() as txn:
        for address, chunk_path in store.addresses():
            on_disk.add(address)
            rec = index.get(txn, address)
            if rec is None or not rec.present:
                unknown.append((address, str(chunk_path)))
    for start in range(0, len(unknown), _BATCH):
        verdicts = []
        for address, path in unknown[start:start + _BATCH]:
            checked = _verify_file(path)
            if checked is None:
                continue
            digest, size = checked
            if digest == address:
                verdicts.append((address, size))
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                removed += 1
        adopted += write(functools.partial(_adopt, index, verdicts))

    def recount(txn: lmdb.Transaction) -> int:
        gone = total = count = 0
        for address, rec in list(index.records(txn)):
            if not rec.present:
                continue
            if address not in on_disk and not store.exists(address):
                index.mark_absent(txn, address)
                gone += 1
                continue
            total += rec.size
            count += 1
        index.set_meta(txn, "total", total)
        index.set_meta(txn, "count", count)
        return gone

    missing = write(recount)
    result = CleanResult(temp, fills, adopted, removed, missing, stale_readers)
    if any((temp, fills, adopted, removed, missing, stale_readers)):
        log.info("cache clean: %s", result)
    return result


def audit(env: lmdb.Environment, index: ChunkIndex, store: ChunkStore, *, start: bytes, max_bytes: int,
          bytes_per_second: int, write: Write) -> tuple[AuditResult, bytes]:
    """Re-hash present chunks from address ``start`` on, at most ``max_bytes`` of them, at
    ``bytes_per_second`` (0: unlimited). Return the result and where the next run starts
    (``b""`` after a full pass). Sync and blocking: run it in a thread (its writes go
    through ``write``).
    """
    todo: list[tuple[bytes, int]] = []
    planned = 0
    next_start = b""
    with env.begin() as txn:
        for address, rec in index.records(txn, start):
            if planned >= max_bytes:
                next_start = address
                break
            if rec.present:
                todo.append((address, rec.size))
                planned += rec.size
    checked = corrupt = missing = 0
    bad: list[bytes] = []
    began = time.monotonic()
    for address, size in todo:
        try:
            fd = store.open_verified(address, size)
        except CorruptChunk:
            log.error("audit: chunk %s is corrupt; dropped", address.hex())
            corrupt += 1
            bad.append(address)
        except OSError as exc:
            log.error("audit: cannot read chunk %s (%s)", address.hex(), exc)
            continue
        else:
            if fd is None:
                missing += 1
                bad.append(address)
                continue
            os.close(fd)
        checked += size
        if bytes_per_second > 0:
            ahead = checked / bytes_per_second - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)
    if bad:
        def drop(txn: lmdb.Transaction) -> None:
            for address in bad:
                index.mark_absent(txn, address)

        write(drop)
    return AuditResult(len(todo), checked, corrupt, missing), next_start
