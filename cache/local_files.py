"""Image data in local files (the file store): read in place, verified per chunk, never cached.

An image whose store is a directory on this machine (:class:`backends.base.LocalBackend`)
is already on local disk: copying it into chunk files would write every byte twice and
hold it twice. Its chunks are read from the store's own file instead, each range
verified against the chunk address the manifest recorded at upload (remembered for a
while, see :mod:`cache.verified`), and sent from that file like a cached chunk. There is
no other copy to fall back on: a range that does not match is an error for that read.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .verified import VerifiedRanges

__all__ = ["open_range"]


def open_range(path: Path, offset: int, length: int, address: bytes, verified: VerifiedRanges) -> int | None:
    """A descriptor on ``path`` whose bytes ``offset``..``offset + length`` hash to ``address``;
    ``None`` if they do not. The caller closes the descriptor.

    Raises ``OSError`` (no such file, a file shorter than the range, a disk error) with
    nothing left open. Blocking: call it on a worker thread.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if st.st_size < offset + length:
            raise OSError(errno.ENODATA, f"the file ends at {st.st_size}, before byte {offset + length}")
        if verified.verify(fd, st, offset, length, address):
            fd, opened = -1, fd
            return opened
        return None
    finally:
        if fd >= 0:
            os.close(fd)
