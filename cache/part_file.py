"""A fill's ``.part`` file, written as the chunk's bytes arrive.

Why direct writes: on these VMs a new page-cache page costs a host fault; writing a cold
fill through the page cache cost 0.7-1.5 s of CPU per GiB and 3-5.6 s of wall time, with
``O_DIRECT`` 0.2 s and 1.7-2 s (``backends.direct_io`` says the same of uploads). A fill's
bytes already sit in a page-aligned buffer (:class:`cache.fill_buffer.BufferPool`), so
whole blocks go to the disk straight from it, with no staging copy: while the fill runs
only whole ``DIRECT_ALIGN`` blocks are written, and :meth:`PartFile.finish` writes the
unaligned tail after switching the descriptor to buffered I/O. Tailers in other processes
read the file as it grows; the kernel keeps their reads coherent with direct writes.
Where the buffer is not aligned or the filesystem refuses ``O_DIRECT`` (tmpfs), the file is
written buffered, as before.

A leftover of the part's name is removed, never reused: it may be a published chunk (a
crash between ``link`` and ``unlink``) that must not change.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from backends.direct_io import DIRECT_ALIGN, create_exclusive, write_all

__all__ = ["PartFile"]


class PartFile:
    """Sequential writes of one chunk's bytes to its new ``.part`` file. Sync and blocking
    (call on a worker thread), one caller at a time."""

    def __init__(self, fd: int, direct: bool) -> None:
        self.fd: int | None = fd
        self._direct = direct
        self.written = 0

    @classmethod
    def create(cls, path: Path, aligned: bool) -> PartFile:
        """A new, empty ``path`` (the caller holds the fill's lock); direct if ``aligned`` (the
        bytes will come from a page-aligned buffer) and the filesystem allows it."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fd, direct = create_exclusive(path, 0o644, direct=aligned)
        return cls(fd, direct)

    def catch_up(self, got: memoryview) -> None:
        """Write what of ``got`` (the chunk's bytes so far, from its first byte) is not on disk
        yet; while direct, only whole blocks."""
        end = len(got) - len(got) % DIRECT_ALIGN if self._direct else len(got)
        if end > self.written:
            self._write(got[self.written:end])

    def finish(self, got: memoryview) -> None:
        """Write the rest of ``got`` (the whole chunk: its whole blocks still direct) and fsync."""
        assert self.fd is not None
        self.catch_up(got)
        if self.written < len(got):
            self._buffered()
            self._write(got[self.written:])
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def _write(self, data: memoryview) -> None:
        assert self.fd is not None
        try:
            write_all(self.fd, data)
        except OSError as exc:
            if not self._direct or exc.errno != errno.EINVAL:
                raise
            # A filesystem that took the open but refuses the write: go on buffered from
            # the same offset (only whole writes of aligned blocks were done so far).
            os.lseek(self.fd, self.written, os.SEEK_SET)
            self._buffered()
            write_all(self.fd, data)
        self.written += len(data)

    def _buffered(self) -> None:
        if self._direct:
            assert self.fd is not None
            fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            self._direct = False
