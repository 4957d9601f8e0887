"""Whole-image verification of what the edge caches, against the upstream's digests.

The upstream names an image's digests (``os_hash_value``, sha512, and the md5
``checksum``) but not its chunk addresses, so the edge learns those from its first fills
and can check a chunk against them only from then on. Until an image has been read whole
and its digests matched, every response of its data holds back its last byte: a
**verify pass** (one per image and process, a task of the service, not of a request) reads
the whole image through the cache, sharing the fills of the requests it runs beside, and
hashes it (and each chunk's address). On a match its manifest gets every chunk address of
the verified bytes and the image is marked verified (LMDB ``edge_verified``: image id -> the
digest it matched), in one transaction, and the held bytes go out; later reads check each chunk against its address, as for any cached image. On a
mismatch its manifest and chunks are dropped (nothing wrong stays cached), every held
response is cut (the client sees a failed transfer, never a complete wrong image), and the
event is logged and counted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import lmdb
import xxhash

from backends import ByteRange, ReadBackend
from cache import FileSlice, ImageCache, ImageDigests, Manifest, UpstreamCorrupt

from ..images.downloads import Piece

__all__ = ["Verifier", "hold_last_byte"]

log = logging.getLogger("imgproxy.edge")


def _expected(manifest: Manifest) -> str:
    return manifest.os_hash_value or manifest.checksum or ""


class _ChunkAddresses:
    """The chunk addresses (xxh3-128) of a stream, cut at ``chunk_size``. Not thread-safe."""

    def __init__(self, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self._hash = xxhash.xxh3_128()
        self._in_chunk = 0
        self._done: list[bytes] = []

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), self.chunk_size - self._in_chunk)
            self._hash.update(view[:take])
            self._in_chunk += take
            view = view[take:]
            if self._in_chunk == self.chunk_size:
                self._done.append(self._hash.digest())
                self._hash.reset()
                self._in_chunk = 0

    def finish(self) -> tuple[bytes, ...]:
        if self._in_chunk:
            self._done.append(self._hash.digest())
            self._in_chunk = 0
        return tuple(self._done)


def _absorb(digests: ImageDigests, chunks: _ChunkAddresses, piece: bytes | memoryview) -> None:
    digests.update(piece)
    chunks.update(piece)


class Verifier:
    """The verify passes of one worker process. Event-loop only; not thread-safe."""

    def __init__(self, cache: ImageCache, env: lmdb.Environment) -> None:
        self.cache = cache
        self.env = env
        self._db = env.open_db(b"edge_verified")
        self._passes: dict[str, asyncio.Task[None]] = {}
        self._cleanups: set[asyncio.Task[None]] = set()
        self.passes = 0
        self.mismatches = 0

    def verified(self, image_id: str, manifest: Manifest) -> bool:
        """Whether ``image_id`` was read whole and matched the digest ``manifest`` names."""
        with self.env.begin() as txn:  # a point read: fine on the loop
            raw = txn.get(image_id.encode(), db=self._db)
        return raw is not None and bytes(raw).decode() == _expected(manifest)

    def start(self, image_id: str, manifest: Manifest, source: ReadBackend, location: str) -> asyncio.Task[None]:
        """The image's running verify pass, or a new one. The task raises :class:`CacheError`
        (:class:`UpstreamCorrupt` on a digest mismatch) when the image could not be verified."""
        task = self._passes.get(image_id)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._run(image_id, manifest, source, location),
                                                          name=f"edge-verify-{image_id}")
            self._passes[image_id] = task
            task.add_done_callback(lambda t: self._done(image_id, t))
        return task

    def _done(self, image_id: str, task: asyncio.Task[None]) -> None:
        if self._passes.get(image_id) is task:
            del self._passes[image_id]
        if not task.cancelled() and task.exception() is not None:
            log.warning("verify pass of image %s failed: %s", image_id, task.exception())

    async def _run(self, image_id: str, manifest: Manifest, source: ReadBackend, location: str) -> None:
        self.passes += 1
        digests = ImageDigests()
        chunks = _ChunkAddresses(manifest.chunk_size)
        try:
            async for piece in self.cache.read(image_id, manifest, ByteRange(0, manifest.size), source, location,
                                               count_hit=False):
                await asyncio.to_thread(_absorb, digests, chunks, piece)
        finally:
            digests.close()
        sha_ok = manifest.os_hash_value is None or digests.os_hash_value == manifest.os_hash_value
        md5_ok = manifest.checksum is None or digests.checksum == manifest.checksum
        if not (sha_ok and md5_ok):
            self.mismatches += 1
            log.error("image %s: the upstream's data does not match its digests (sha512 %s, md5 %s); "
                      "dropped from the cache, responses cut", image_id, digests.os_hash_value, digests.checksum)
            self._spawn(self._drop(image_id))
            raise UpstreamCorrupt("the upstream's data does not match the image's os_hash_value",
                                  image_id=image_id, offset=manifest.size)
        await asyncio.to_thread(self._mark, image_id, manifest, chunks.finish())

    async def _drop(self, image_id: str) -> None:
        """Forget the image's manifest and chunks once the fills in flight have stored theirs
        (they would otherwise land after it and stay)."""
        await self.cache.wait_idle()
        await self.cache.forget_image_async(image_id)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def aclose(self) -> None:
        """Finish the cleanups of mismatched images (passes end with the cache)."""
        await asyncio.gather(*list(self._cleanups), return_exceptions=True)

    def _mark(self, image_id: str, manifest: Manifest, addresses: tuple[bytes, ...]) -> None:
        """Record every chunk address of the verified bytes with the mark, in one transaction
        (blocking: a worker thread). Fills learn the same addresses; the first to land wins."""
        self.cache.flush_access_times()  # collisions the fills found must stay recorded
        with self.env.begin(write=True) as txn:
            stored = self.cache.manifests.get(txn, image_id)
            if stored is None or (stored.size, stored.os_hash_value) != (manifest.size, manifest.os_hash_value):
                return  # dropped or replaced meanwhile: this pass speaks for nothing stored
            self.cache.record_manifest(txn, image_id, dataclasses.replace(stored, chunks=addresses))
            txn.put(image_id.encode(), _expected(manifest).encode(), db=self._db)


async def hold_last_byte(body: AsyncIterator[Piece], length: int, task: asyncio.Task[None]) -> AsyncIterator[Piece]:
    """``body`` (``length`` bytes) with its last byte held until ``task`` (the image's
    verify pass) succeeds.

    Raises the pass's :class:`CacheError` instead of sending that byte. The held byte
    is a copy taken before ``body`` is resumed (a :class:`FileSlice` is valid only until
    then; a fill's buffer is not kept for one byte). Closes ``body``.
    """
    sent = 0
    held: Piece = b""
    try:
        async for piece in body:
            sent += len(piece)
            if sent < length:
                yield piece
                continue
            piece, held = _split_last(piece)
            if piece:
                yield piece
        await asyncio.shield(task)
        if held:
            yield held
    finally:
        await body.aclose()  # type: ignore[attr-defined]


def _split_last(piece: Piece) -> tuple[Piece, Piece]:
    """``(to send now, a copy of the last byte)``. The copy keeps the piece's kind (a
    ``memoryview`` is a fill's bytes, which the request log tells from the cache's)."""
    if isinstance(piece, FileSlice):
        last = os.pread(piece.fd, 1, piece.offset + piece.count - 1)
        if len(last) != 1:
            raise OSError(errno.EIO, "a verified chunk ended early")
        return FileSlice(piece.fd, piece.offset, piece.count - 1), last
    if isinstance(piece, memoryview):
        return piece[:-1], memoryview(bytes(piece[-1:]))
    return piece[:-1], piece[-1:]
