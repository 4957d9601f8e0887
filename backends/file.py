"""The ``file`` store: one file per image under a directory, written atomically.

Objects live at ``<root>/<image_id>`` and are named by ``file:///<root>/<image_id>``.
A location outside ``<root>`` (or naming a nested path) is refused, so an image
location can never point the service at an arbitrary file.

Writes go to ``<root>/.tmp-<image_id>-<random>``, are fsynced, renamed into place and
the directory is fsynced: a reader sees the whole object or none. Leftover temp
files (a crash mid-upload) are removed by :meth:`FileBackend.sweep_temp`.

File I/O runs in worker threads: the store is read cold from disk, where a blocking
read on the event loop would stall every other request.

Images are read in place (:class:`backends.base.LocalBackend`): the cache verifies each
chunk of the file against the image's manifest and sends it from the file, and keeps no
copy, so each uploaded byte is written once. Option ``in_place = false`` (a directory on a
network filesystem) has them cached like a remote store's.

Uploads are written with ``O_DIRECT`` where the filesystem allows it: copying an upload
into the page cache costs ~2.6 s of CPU per GiB on the target machines (a direct write
~0.03 s), which an upload that must also hash md5 + sha512 cannot spare, and a large
upload would push hot data out of the page cache. The first read of an image then comes
from disk. Where ``O_DIRECT`` is refused, writes are buffered.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from anyio import to_thread

from .base import (
    PIECE_SIZE,
    BackendCorrupt,
    BackendError,
    BackendFull,
    BackendNotFound,
    BackendUnavailable,
    ByteRange,
)
from .direct_io import DirectFile, create_exclusive, write_all

__all__ = ["FileBackend", "FileWriter", "TEMP_PREFIX"]

TEMP_PREFIX = ".tmp-"

# Flush a large upload to stable storage every this many bytes, in the background, so the
# final fsync does not have to push the whole image at once: buffered writes would otherwise
# wait in the page cache (up to dirty_background_ratio of RAM, GiBs) until commit, and
# direct writes in the disk's volatile cache (a VM's disk: on the target VMs the commit of
# a 1 GiB upload took 0.5-1.3 s with one fsync at the end, 0.00-0.01 s with these).
WRITEBACK_EVERY = 64 * 1024 * 1024

def _translate(exc: OSError, location: str) -> BackendError:
    if exc.errno == errno.ENOENT:
        return BackendNotFound(f"no such object: {location}", location=location)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return BackendFull("the file store is full", location=location)
    return BackendUnavailable(f"file store I/O error on {location}: {exc.strerror or exc}", location=location)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileWriter:
    """One object being written to a temp file; see :class:`backends.base.Writer`.

    Up to ``writes_in_flight`` :meth:`write` calls may run at once: they are written in the
    order they were called, back to back on the writer's own thread, so the disk never
    waits for the event loop between two pieces (a direct write is synchronous: on the
    target VMs one 4 MiB write took 8-12 ms, and a loop busy receiving and hashing added
    milliseconds to each hand-off). Nothing else may overlap: commit and abort come after
    every write has returned. After :meth:`commit` succeeds, :meth:`abort` is a no-op.
    """

    writes_in_flight = 4

    def __init__(self, backend: FileBackend, image_id: str, fd: int, temp: Path, *, direct: bool = False) -> None:
        self._backend = backend
        self._image_id = image_id
        self._fd: int | None = fd
        self._direct = DirectFile(fd) if direct else None
        self._temp = temp
        self._committed = False
        self._aborted = False
        self._failed: OSError | None = None  # a write failed: the ones queued behind it fail too
        self._lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix="file-writer")
        self._unsynced = 0
        self._syncing: asyncio.Future[None] | None = None
        self.bytes_written = 0

    @property
    def temp_path(self) -> Path:
        return self._temp

    def _write_sync(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        """On the lane: append ``data``."""
        if self._failed is not None:
            raise self._failed
        try:
            if self._direct is not None:
                self._direct.write(data)
            else:
                write_all(fd, data)
        except OSError as exc:
            self._failed = exc
            raise

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._fd is None:
            raise BackendError("writer is closed", location=self._backend.location_for(self._image_id))
        fd = self._fd
        try:
            await asyncio.get_running_loop().run_in_executor(self._lane, self._write_sync, fd, data)
            self._unsynced += len(data)
            if self._unsynced >= WRITEBACK_EVERY and (self._syncing is None or self._syncing.done()):
                if self._syncing is not None:
                    self._syncing.result()  # a failed background flush fails the write
                self._unsynced = 0
                self._syncing = asyncio.get_running_loop().run_in_executor(None, os.fdatasync, fd)
        except OSError as exc:
            raise _translate(exc, str(self._temp)) from exc
        self.bytes_written += len(data)

    async def _settle(self) -> None:
        """Wait for the background flush: the descriptor must outlive it."""
        syncing, self._syncing = self._syncing, None
        if syncing is not None:
            await asyncio.shield(syncing)

    def _commit_sync(self) -> str:
        assert self._fd is not None
        final = self._backend.root / self._image_id
        fd, self._fd = self._fd, None
        try:
            if self._direct is not None:
                self._direct.finish()
            os.fsync(fd)
        finally:
            os.close(fd)
            self._release_staging()
        os.rename(self._temp, final)
        self._committed = True
        _fsync_dir(self._backend.root)
        return self._backend.location_for(self._image_id)

    async def commit(self) -> str:
        """fsync, rename into place, fsync the directory; return the location URL."""
        if self._committed:
            return self._backend.location_for(self._image_id)
        if self._fd is None or self._aborted:
            raise BackendError("writer was aborted", location=self._backend.location_for(self._image_id))
        try:
            await self._settle()
            location = await to_thread.run_sync(self._commit_sync)
        except OSError as exc:
            await self.abort()
            raise _translate(exc, str(self._temp)) from exc
        self._lane.shutdown(wait=False)
        return location

    def _release_staging(self) -> None:
        direct, self._direct = self._direct, None
        if direct is not None:
            direct.close()

    def _abort_sync(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        self._release_staging()
        if not self._committed:
            try:
                os.unlink(self._temp)
            except FileNotFoundError:
                pass

    async def abort(self) -> None:
        """Close and remove the temp file. Safe to call twice; no-op after commit."""
        if self._committed or self._aborted:
            return
        self._aborted = True
        try:
            await self._settle()
        except OSError:
            pass  # the data is being thrown away anyway
        await to_thread.run_sync(self._abort_sync)
        self._lane.shutdown(wait=False)

    def __del__(self) -> None:
        # Neither committed nor aborted (a caller's bug): the lane's idle thread must still end.
        lane = getattr(self, "_lane", None)
        if lane is not None:
            lane.shutdown(wait=False)


class FileBackend:
    """A directory of image files. Implements :class:`backends.base.WriteBackend`.

    Safe to share between tasks: every call opens its own file descriptor.
    """

    def __init__(self, root: Path, *, direct_io: bool = True, in_place: bool = True) -> None:
        self.root = root
        # Write uploads with O_DIRECT (option ``[file] direct_io``): off for filesystems
        # where direct I/O is slow or refused.
        self.direct_io = direct_io
        # Read images in place (option ``[file] in_place``): off for a network filesystem.
        self.in_place = in_place

    @staticmethod
    def _parse(url: str, options: Mapping[str, Any]) -> tuple[Path, dict[str, bool]]:
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise BackendError(f"not a local file URL: {url!r}", location=url)
        path = Path(unquote(parts.path))
        if not path.is_absolute():
            raise BackendError(f"file store path must be absolute: {url!r}", location=url)
        unknown = sorted(set(options) - {"direct_io", "in_place"})
        if unknown:
            raise ValueError(f"file store option {unknown[0]!r}: unknown (known: direct_io, in_place)")
        flags = {}
        for name in ("direct_io", "in_place"):
            flags[name] = options.get(name, True)
            if not isinstance(flags[name], bool):
                raise ValueError(f"file store option {name!r} must be true or false, got {flags[name]!r}")
        return path, flags

    @classmethod
    def validate(cls, url: str, options: Mapping[str, Any]) -> None:
        """Check the URL and options without touching the disk: BackendError (URL), ValueError (option)."""
        cls._parse(url, options)

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> FileBackend:
        """``file:///abs/dir``: the directory is created if missing."""
        path, flags = cls._parse(url, options)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendUnavailable(f"cannot create file store {path}: {exc.strerror}", location=url) from exc
        return cls(path.resolve(), **flags)

    # -- naming ---------------------------------------------------------------

    def location_for(self, image_id: str) -> str:
        return (self.root / image_id).as_uri()

    def _check_id(self, image_id: str, location: str) -> None:
        if not image_id or "/" in image_id or image_id.startswith(".") or "\0" in image_id:
            raise BackendError(f"not a valid object name: {image_id!r}", location=location)

    def path_for(self, location: str) -> Path:
        """The file behind ``location``; raises BackendError if it is not inside the store."""
        parts = urlsplit(location)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise BackendError(f"not a file URL: {location!r}", location=location)
        path = Path(os.path.normpath(unquote(parts.path)))
        if path.parent != self.root:
            raise BackendError(f"location is outside the file store {self.root}", location=location)
        self._check_id(path.name, location)
        return path

    def local_path(self, location: str) -> Path | None:
        """See :class:`backends.base.LocalBackend`."""
        path = self.path_for(location)
        return path if self.in_place else None

    # -- reading --------------------------------------------------------------

    async def size(self, location: str) -> int:
        path = self.path_for(location)
        try:
            st = await to_thread.run_sync(os.stat, path)
        except OSError as exc:
            raise _translate(exc, location) from exc
        return st.st_size

    async def read(self, location: str, byte_range: ByteRange | None = None) -> AsyncIterator[bytes]:
        """Yield the object's bytes in pieces of at most ``PIECE_SIZE``.

        Raises BackendNotFound if the file is missing, BackendCorrupt if ``byte_range``
        ends past the end of the file, BackendUnavailable on I/O errors or if the
        file shrinks while being read.
        """
        path = self.path_for(location)
        try:
            fd = await to_thread.run_sync(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _translate(exc, location) from exc
        try:
            size = os.fstat(fd).st_size
            wanted = byte_range or ByteRange(0, size)
            if wanted.end > size:
                raise BackendCorrupt(
                    f"range {wanted.start}-{wanted.end} is past the end of {location} ({size} bytes)",
                    location=location,
                )
            offset = wanted.start
            while offset < wanted.end:
                n = min(PIECE_SIZE, wanted.end - offset)
                try:
                    piece = await to_thread.run_sync(os.pread, fd, n, offset)
                except OSError as exc:
                    raise _translate(exc, location) from exc
                if not piece:
                    raise BackendUnavailable(f"{location} ended at {offset}, expected {wanted.end}", location=location)
                offset += len(piece)
                yield piece
        finally:
            os.close(fd)

    # -- writing --------------------------------------------------------------

    async def open_writer(self, image_id: str) -> FileWriter:
        self._check_id(image_id, image_id)
        temp = self.root / f"{TEMP_PREFIX}{image_id}-{secrets.token_hex(6)}"
        try:
            fd, direct = await to_thread.run_sync(create_exclusive, temp, 0o640, self.direct_io)
        except OSError as exc:
            raise _translate(exc, str(temp)) from exc
        return FileWriter(self, image_id, fd, temp, direct=direct)

    async def delete(self, location: str) -> None:
        path = self.path_for(location)
        try:
            await to_thread.run_sync(os.unlink, path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _translate(exc, location) from exc

    def sweep_temp(self, max_age: float, *, now: float | None = None) -> int:
        """Remove temp files older than ``max_age`` seconds (crash leftovers); return how many.

        Sync: meant for start-up and the cleaner loop (call it in a thread there).
        A younger temp file may belong to an upload in progress, so it is kept.
        """
        now = time.time() if now is None else now
        removed = 0
        with os.scandir(self.root) as entries:
            for entry in entries:
                if not entry.name.startswith(TEMP_PREFIX):
                    continue
                try:
                    if now - entry.stat(follow_symlinks=False).st_mtime >= max_age:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed

    async def aclose(self) -> None:
        """Nothing to release: no descriptor outlives a call."""
