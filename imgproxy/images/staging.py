"""The staging area of glance-direct: image data received by ``PUT /stage``, waiting for its import.

One file per image under ``<data_dir>/staging``. The body is written to a private temp name
(``.<id>.<random>.tmp``), fsynced, and renamed to ``<id>`` only once complete, so a file
named by its image id is always whole; temp files are crash leftovers, swept at start-up and
by the cleaner. File I/O runs in worker threads, a piece at a time (memory stays at a piece).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from backends import PIECE_SIZE

from ..formats import FormatInspector

__all__ = ["StagingArea"]

_READ = 4 * PIECE_SIZE


class StagingArea:
    """Staged files of one data dir. Safe for concurrent use on different images."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, image_id: str) -> Path:
        return self.root / image_id

    def exists(self, image_id: str) -> bool:
        return self.path(image_id).is_file()

    async def receive(self, image_id: str, body: AsyncIterator[bytes], cap: int,
                      too_large: Callable[[int], Exception], inspector: FormatInspector | None = None) -> int:
        """Write ``body`` as ``image_id``'s staged data; return its size.

        Raises ``too_large(cap)`` past ``cap`` bytes, FormatRefused when ``inspector`` refuses
        the data, and whatever ``body`` raises; on any failure nothing is left (the temp file
        is removed).
        """
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        tmp = self.root / f".{image_id}.{secrets.token_hex(4)}.tmp"
        fd = await asyncio.to_thread(os.open, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        size = 0
        try:
            parts: list[bytes] = []
            held = 0
            async for part in body:
                size += len(part)
                if size > cap:
                    raise too_large(cap)
                if inspector is not None:
                    inspector.feed(part)  # raises FormatRefused once the data is certainly refused
                parts.append(part)
                held += len(part)
                if held >= _READ:
                    await asyncio.to_thread(_write_all, fd, b"".join(parts))
                    parts, held = [], 0
            if parts:
                await asyncio.to_thread(_write_all, fd, b"".join(parts))
            if inspector is not None and (refusal := inspector.finish(size).refusal) is not None:
                raise refusal
            await asyncio.to_thread(os.fsync, fd)
        except BaseException:
            os.close(fd)
            await asyncio.shield(asyncio.to_thread(_unlink, tmp))
            raise
        os.close(fd)
        await asyncio.to_thread(os.replace, tmp, self.path(image_id))
        return size

    async def read(self, image_id: str) -> AsyncIterator[bytes]:
        """The staged data in pieces of at most ``PIECE_SIZE``; FileNotFoundError if none."""
        f = await asyncio.to_thread(open, self.path(image_id), "rb")
        try:
            while piece := await asyncio.to_thread(f.read, PIECE_SIZE):
                yield piece
        finally:
            f.close()

    def remove(self, image_id: str) -> None:
        """Remove the staged data (blocking; a missing file is fine)."""
        _unlink(self.path(image_id))

    def sweep(self, keep: Callable[[str], bool], stale_age: float) -> int:
        """Remove staged files whose image ``keep`` no longer wants, and temp files older
        than ``stale_age`` seconds (a crashed stage). Blocking; returns how many went."""
        removed = 0
        now = time.time()
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if entry.name.startswith("."):
                try:
                    stale = now - entry.stat().st_mtime > stale_age
                except FileNotFoundError:
                    continue
                if stale:
                    _unlink(Path(entry.path))
                    removed += 1
            elif not keep(entry.name):
                _unlink(Path(entry.path))
                removed += 1
        return removed


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
