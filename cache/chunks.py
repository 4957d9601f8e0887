"""Chunk files on disk: ``<root>/chunks/ab/<32 hex>``, named by their xxh3-128.

Every chunk file is complete and was fsynced before it got its name (temp file, or a
fill's ``.part`` file, then a no-clobber ``link``): a reader never sees half a chunk.
An address that already has a file is shared only after a byte-for-byte comparison,
so a crafted xxh3 collision cannot put one image's bytes into another.

Chunk files are written with ``O_DIRECT`` where the filesystem allows it
(:mod:`backends.direct_io`): on the target VMs a new page-cache page costs a host fault
(~2.5 s of CPU per GiB written through the page cache), which an upload that also hashes
md5 + sha512 on 2 cores cannot spare; nor should a large upload push hot chunks out of the
page cache. The first read of such a chunk comes from disk.

Chunks are verified with reads feeding xxh3 (:class:`cache.verified.RangeHasher`), never
through a mapping: a disk error while reading is an ``OSError`` the caller turns into a
refill, where on a mapping it would be SIGBUS and kill the process. A reader may pass a
:class:`cache.verified.VerifiedRanges` to skip re-hashing a chunk file it verified recently.

Layout under ``root``: ``chunks/`` (chunk files), ``tmp/`` (``<pid>-<random>`` temp files
of ingests), ``fills/`` (``<key>.lock`` + ``<key>.part`` of fills in progress).

All methods are sync and blocking: run them on a worker thread. Safe for concurrent use
by threads and processes: each call uses its own descriptors.
"""

from __future__ import annotations

import enum
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import xxhash

from backends.direct_io import DirectFile, create_exclusive, staging_buffer, write_all

from .errors import CorruptChunk
from .manifest import ADDRESS_SIZE
from .verified import RangeHasher, VerifiedRanges

__all__ = ["ChunkStore", "WriteOutcome", "address_of"]


def address_of(data: bytes | bytearray | memoryview) -> bytes:
    """The chunk address of ``data``: its xxh3-128 digest (16 bytes)."""
    return xxhash.xxh3_128_digest(data)


class WriteOutcome(enum.Enum):
    STORED = "stored"  # a new chunk file now exists under the address
    SHARED = "shared"  # an identical chunk was already there
    COLLISION = "collision"  # different bytes with the same address are there: not shared


class ChunkStore:
    """The chunk files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._local = threading.local()  # per-thread O_DIRECT staging buffers
        self._hasher = RangeHasher()
        self.chunks_dir = root / "chunks"
        self.tmp_dir = root / "tmp"
        self.fills_dir = root / "fills"
        for d in (self.chunks_dir, self.tmp_dir, self.fills_dir):
            d.mkdir(parents=True, exist_ok=True)

    def path(self, address: bytes) -> Path:
        h = address.hex()
        return self.chunks_dir / h[:2] / h[2:]

    def exists(self, address: bytes) -> bool:
        return os.path.exists(self.path(address))

    def load(self, address: bytes, length: int) -> bytes | None:
        """The verified bytes of chunk ``address``, or ``None`` if no such chunk of ``length`` is cached.

        Raises :class:`CorruptChunk` (after removing the file) if the file's digest is
        wrong: a corrupt chunk is never returned. A valid file of another length (a
        collision) is left alone and reported as ``None``.
        """
        path = self.path(address)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            data = os.pread(fd, length + 1, 0)
            if len(data) != length:
                data = os.pread(fd, os.fstat(fd).st_size, 0)
            if address_of(data) == address:
                return data if len(data) == length else None
            st = os.fstat(fd)
        finally:
            os.close(fd)
        self._remove_if_same(path, st)
        raise CorruptChunk(f"chunk {address.hex()} failed verification")

    def open_verified(self, address: bytes, length: int, verified: VerifiedRanges | None = None) -> int | None:
        """A descriptor on chunk ``address`` whose ``length`` bytes are verified, or ``None``.

        Same outcomes as :meth:`load` (``None`` for no chunk of that length, CorruptChunk
        after removing a bad file), without holding the chunk in memory: the digest is
        taken over reads into a small per-thread buffer, and the caller sends the bytes
        from the descriptor (``sendfile`` or ``pread``), then closes it. With ``verified``
        a chunk file verified recently is not hashed again (see :mod:`cache.verified`);
        without, it always is (the auditor). Chunk files are never modified once named,
        so the bytes read later are the bytes verified (the descriptor keeps them readable
        even if the pruner unlinks the name meanwhile). ``OSError`` (a disk error)
        propagates with nothing left open.
        """
        try:
            fd = os.open(self.path(address), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            if st.st_size == length and length > 0:
                good = (verified.verify(fd, st, 0, length, address) if verified is not None
                        else self._hasher.digest(fd, 0, length) == address)
                if good:
                    fd, opened = -1, fd
                    return opened
        finally:
            if fd >= 0:
                os.close(fd)
        # Another length (a collision or a truncated file), or bad bytes: load() sorts it out.
        self.load(address, length)
        return None

    def _remove_if_same(self, path: Path, st: os.stat_result) -> None:
        # Only the file we checked: a fill may have just put a good one in its place.
        try:
            now = os.stat(path)
            if (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
                os.unlink(path)
        except FileNotFoundError:
            pass

    def remove(self, address: bytes) -> bool:
        try:
            os.unlink(self.path(address))
            return True
        except FileNotFoundError:
            return False

    def write(self, address: bytes, data: bytes | bytearray | memoryview) -> WriteOutcome:
        """Store ``data`` (whose digest is ``address``) unless an identical chunk exists."""
        outcome = self._compare_existing(address, data)
        if outcome is not None:
            return outcome
        temp = self.tmp_dir / f"{os.getpid()}-{secrets.token_hex(8)}"
        fd, direct = create_exclusive(temp, 0o644, direct=True)
        try:
            try:
                if direct:
                    writer = DirectFile(fd, self._staging())
                    writer.write(data)
                    writer.finish()
                else:
                    write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            return self.publish(temp, address, data)
        finally:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass

    def _staging(self) -> memoryview:
        staging: memoryview | None = getattr(self._local, "staging", None)
        if staging is None:
            staging = self._local.staging = staging_buffer()  # lives as long as its thread
        return staging

    def publish(self, source: Path, address: bytes, data: bytes | bytearray | memoryview) -> WriteOutcome:
        """Give the complete, fsynced file ``source`` (holding ``data``) the name ``address``.

        Never replaces a valid chunk; ``source`` is left for the caller to remove.
        """
        final = self.path(address)
        for _ in range(3):
            try:
                os.link(source, final)
                return WriteOutcome.STORED
            except FileNotFoundError:
                final.parent.mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                outcome = self._compare_existing(address, data)
                if outcome is not None:
                    return outcome
                # The existing file was corrupt and is gone: link again.
        raise OSError(f"cannot publish chunk {address.hex()}")

    def _compare_existing(self, address: bytes, data: bytes | bytearray | memoryview) -> WriteOutcome | None:
        """SHARED/COLLISION if a valid file is at ``address``; ``None`` if none (corrupt ones are removed)."""
        try:
            existing = self.load(address, len(data))
        except CorruptChunk:
            return None
        if existing is None:
            # Either no file, or a valid chunk of another length: a collision.
            return WriteOutcome.COLLISION if self.exists(address) else None
        # startswith (equal lengths here) is one memcmp for any buffer; ``==`` against a
        # memoryview would compare byte by byte in Python's generic buffer code.
        return WriteOutcome.SHARED if existing.startswith(data) else WriteOutcome.COLLISION

    def addresses(self) -> Iterator[tuple[bytes, Path]]:
        """Every chunk file (address, path), in no particular order. Skips foreign names."""
        for sub in os.scandir(self.chunks_dir):
            if not sub.is_dir(follow_symlinks=False) or len(sub.name) != 2:
                continue
            for entry in os.scandir(sub.path):
                name = sub.name + entry.name
                if len(name) != ADDRESS_SIZE * 2:
                    continue
                try:
                    yield bytes.fromhex(name), Path(entry.path)
                except ValueError:
                    continue
