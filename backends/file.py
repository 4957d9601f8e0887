"""The ``file`` store: one file per image under a directory, written atomically.

Objects live at ``<root>/<image_id>`` and are named by ``file:///<root>/<image_id>``.
A location outside ``<root>`` (or naming a nested path) is refused, so an image
location can never point the service at an arbitrary file.

Writes go to ``<root>/.tmp-<image_id>-<random>``, are fsynced, renamed into place and
the directory is fsynced: a reader sees the whole object or none. Leftover temp
files (a crash mid-upload) are removed by :meth:`FileBackend.sweep_temp`.

File I/O runs in worker threads: the store is read cold from disk, where a blocking
read on the event loop would stall every other request.

Uploads are written with ``O_DIRECT`` where the filesystem allows it: the store copy is
cold data (the cache holds the hot one), and copying it into the page cache costs ~2.6 s
of CPU per GiB on the target machines (a direct write ~0.03 s), which an upload that must
also hash md5 + sha512 cannot spare. Where ``O_DIRECT`` is refused, writes are buffered.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import mmap
import os
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from anyio import to_thread

from .base import (
    PIECE_SIZE,
    BackendCorrupt,
    BackendError,
    BackendNotFound,
    BackendUnavailable,
    ByteRange,
)

__all__ = ["FileBackend", "FileWriter", "TEMP_PREFIX"]

TEMP_PREFIX = ".tmp-"

# Buffered writes only: start writeback of a large upload every this many bytes, in the
# background, so the final fsync does not have to push the whole image to disk at once
# (the kernel would otherwise hold up to dirty_background_ratio of RAM, GiBs, until commit).
WRITEBACK_EVERY = 64 * 1024 * 1024

# O_DIRECT wants buffer address, file offset and length aligned to the logical block
# size (512 B or 4 KiB on common disks): 4 KiB suits both.
DIRECT_ALIGN = 4096
# Direct writes go through one page-aligned staging buffer per writer (one memcpy per
# byte, ~0.1 s/GiB): callers may pass any buffer, of any length.
DIRECT_STAGING = 4 * PIECE_SIZE


def _translate(exc: OSError, location: str) -> BackendError:
    if exc.errno == errno.ENOENT:
        return BackendNotFound(f"no such object: {location}", location=location)
    return BackendUnavailable(f"file store I/O error on {location}: {exc.strerror or exc}", location=location)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _create(temp: Path, direct_io: bool) -> tuple[int, bool]:
    """Create ``temp`` for writing; ``(fd, True)`` if it is open with ``O_DIRECT``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    if direct_io:
        try:
            return os.open(temp, flags | os.O_DIRECT, 0o640), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # e.g. a filesystem without direct I/O
                raise
    return os.open(temp, flags, 0o640), False


class _DirectFile:
    """Sequential writes to ``fd`` (opened with ``O_DIRECT``) through an aligned staging buffer.

    Sync and blocking; not safe for concurrent use. :meth:`finish` writes the tail
    (padded to the alignment, then truncated to the true size); the caller fsyncs.
    If the filesystem rejects a direct write (EINVAL), the descriptor is switched to
    buffered I/O and writing goes on from the same offset.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.direct = True
        self._staging = mmap.mmap(-1, DIRECT_STAGING)  # anonymous maps are page-aligned
        self._view = memoryview(self._staging)
        self._held = 0  # bytes waiting in the staging buffer
        self._offset = 0  # bytes on disk (a multiple of DIRECT_ALIGN while direct)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        if not self.direct:
            _write_all(self.fd, view)
            return
        while view:
            take = min(len(view), DIRECT_STAGING - self._held)
            self._view[self._held:self._held + take] = view[:take]
            self._held += take
            view = view[take:]
            if self._held == DIRECT_STAGING:
                self._flush(DIRECT_STAGING)

    def _flush(self, length: int) -> None:
        """Write ``length`` (aligned) staged bytes at the current offset."""
        done = 0
        while done < length:
            try:
                n = os.pwrite(self.fd, self._view[done:length], self._offset + done)
            except OSError as exc:
                if exc.errno != errno.EINVAL or done:
                    raise
                self._to_buffered()
                _write_all(self.fd, self._view[:self._held])
                self._held = 0
                return
            if n <= 0 or n % DIRECT_ALIGN:
                raise OSError(errno.EIO, f"short direct write ({n} of {length - done} bytes)")
            done += n
        self._offset += done
        self._held = 0

    def _to_buffered(self) -> None:
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
        os.lseek(self.fd, self._offset, os.SEEK_SET)
        self.direct = False

    def finish(self) -> None:
        """Write what is staged; the file then holds exactly the bytes written."""
        if not self.direct or not self._held:
            return
        size = self._offset + self._held
        padded = -(-self._held // DIRECT_ALIGN) * DIRECT_ALIGN
        self._view[self._held:padded] = bytes(padded - self._held)
        self._flush(padded)
        if self.direct:
            os.ftruncate(self.fd, size)
            self._offset = size

    def close(self) -> None:
        self._view.release()
        self._staging.close()


class FileWriter:
    """One object being written to a temp file; see :class:`backends.base.Writer`.

    Not safe for concurrent use. After :meth:`commit` succeeds, :meth:`abort` is a no-op.
    """

    def __init__(self, backend: FileBackend, image_id: str, fd: int, temp: Path, *, direct: bool = False) -> None:
        self._backend = backend
        self._image_id = image_id
        self._fd: int | None = fd
        self._direct = _DirectFile(fd) if direct else None
        self._temp = temp
        self._committed = False
        self._aborted = False
        self._unsynced = 0
        self._syncing: asyncio.Future[None] | None = None
        self.bytes_written = 0

    @property
    def temp_path(self) -> Path:
        return self._temp

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._fd is None:
            raise BackendError("writer is closed", location=self._backend.location_for(self._image_id))
        fd = self._fd
        try:
            if self._direct is not None:
                await to_thread.run_sync(self._direct.write, data)
                if self._direct.direct:
                    self.bytes_written += len(data)
                    return  # nothing dirty in the page cache to push out early
            else:
                await to_thread.run_sync(_write_all, fd, data)
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
            return await to_thread.run_sync(self._commit_sync)
        except OSError as exc:
            await self.abort()
            raise _translate(exc, str(self._temp)) from exc

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


class FileBackend:
    """A directory of image files. Implements :class:`backends.base.WriteBackend`.

    Safe to share between tasks: every call opens its own file descriptor.
    """

    def __init__(self, root: Path, *, direct_io: bool = True) -> None:
        self.root = root
        # Write uploads with O_DIRECT (option ``[file] direct_io``): off for filesystems
        # where direct I/O is slow or refused.
        self.direct_io = direct_io

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> FileBackend:
        """``file:///abs/dir``: the directory is created if missing."""
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise BackendError(f"not a local file URL: {url!r}", location=url)
        path = Path(unquote(parts.path))
        if not path.is_absolute():
            raise BackendError(f"file store path must be absolute: {url!r}", location=url)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendUnavailable(f"cannot create file store {path}: {exc.strerror}", location=url) from exc
        direct_io = options.get("direct_io", True)
        if not isinstance(direct_io, bool):
            raise ValueError(f"file store option 'direct_io' must be true or false, got {direct_io!r}")
        return cls(path.resolve(), direct_io=direct_io)

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
            fd, direct = await to_thread.run_sync(_create, temp, self.direct_io)
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
