"""One object being written to an S3 bucket: a single PUT when small, a multipart upload when large.

Up to ``part_size`` bytes are held in memory; a commit before that sends them with one PUT.
Past it, a multipart upload starts (obstore's ``put_async`` over an async iterator) and
the writer hands it pieces through a short queue: ``write`` waits while the queue is full,
and obstore keeps at most ``upload_concurrency`` parts in flight, so memory stays near
``(upload_concurrency + 1) * part_size`` whatever the image size. S3 takes at most
``MAX_PARTS`` parts, so an image over ``MAX_PARTS * part_size`` bytes is refused
(:class:`BackendFull`, 413 to the uploader) before its first byte past that bound, not by
the server at the part it cannot take.

S3 shows an object only when its upload completes (the PUT ends, or the multipart
upload is completed), so nothing is visible before :meth:`S3Writer.commit`. Abort ends
the piece iterator with an error; obstore then aborts the multipart upload, which drops
the parts already sent. (A process killed mid-upload leaves an incomplete multipart upload
behind: a bucket lifecycle rule, ``AbortIncompleteMultipartUpload``, removes those.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import obstore

from .base import BackendError, BackendFull

__all__ = ["S3Writer"]

# Pieces the writer may queue ahead of the upload (each a ``write``'s data, ~4 MiB here).
QUEUE_PIECES = 2


class _Aborted(Exception):
    """Ends the piece iterator so that obstore aborts the multipart upload."""


class S3Writer:
    """See :class:`backends.base.Writer`. Not safe for concurrent use.

    ``translate`` maps a foreign exception to a :class:`BackendError` (the backend's
    one translation). After :meth:`commit` succeeds, :meth:`abort` is a no-op.
    """

    MAX_PARTS = 10_000  # S3's bound on the parts of one multipart upload

    def __init__(self, store: Any, key: str, location: str, *, part_size: int, concurrency: int,
                 translate: Callable[[BaseException], BackendError]) -> None:
        self._store = store
        self._key = key
        self._location = location
        self._part_size = part_size
        self._concurrency = concurrency
        self._translate = translate
        self._held: list[bytes] = []  # before the multipart upload starts
        self._held_bytes = 0
        self._queue: asyncio.Queue[bytes | None | _Aborted] | None = None
        self._upload: asyncio.Task[Any] | None = None
        self._state = "open"  # open -> committed | aborted
        self.bytes_written = 0

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state != "open":
            raise BackendError(f"writer is {self._state}", location=self._location)
        if not data:
            return
        if self.bytes_written + len(data) > self.MAX_PARTS * self._part_size:
            await self.abort()
            raise BackendFull(f"the image is larger than S3 takes in {self.MAX_PARTS} parts of "
                              f"{self._part_size} bytes (the store's part_size)", location=self._location)
        # obstore keeps a reference to ``bytes`` (no copy); anything mutable is copied once.
        piece = data if isinstance(data, bytes) else bytes(data)
        self.bytes_written += len(piece)
        if self._upload is None:
            self._held.append(piece)
            self._held_bytes += len(piece)
            if self._held_bytes > self._part_size:
                self._start_multipart()
            return
        await self._send(piece)

    def _start_multipart(self) -> None:
        self._queue = asyncio.Queue(QUEUE_PIECES)
        self._upload = asyncio.ensure_future(self._run(obstore.put_async(
            self._store, self._key, self._pieces(), use_multipart=True,
            chunk_size=self._part_size, max_concurrency=self._concurrency,
        )))

    @staticmethod
    async def _run(upload: Awaitable[Any]) -> Any:
        return await upload

    async def _pieces(self) -> AsyncIterator[bytes]:
        """What obstore uploads: the held pieces, then whatever the queue brings, until the end mark."""
        held, self._held, self._held_bytes = self._held, [], 0
        while held:
            yield held.pop(0)
        assert self._queue is not None
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, _Aborted):
                raise item
            yield item

    async def _send(self, item: bytes | None) -> None:
        """Queue ``item`` for the upload, waiting for room; raise the upload's error if it failed."""
        assert self._queue is not None and self._upload is not None
        put = asyncio.ensure_future(self._queue.put(item))
        try:
            await asyncio.wait((put, self._upload), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not put.done():
                put.cancel()
        if not put.done() or put.cancelled():
            await self._fail()

    async def _fail(self) -> None:
        """The upload ended before its end mark (a part failed): it has aborted itself; report why."""
        assert self._upload is not None
        self._state = "aborted"
        try:
            await self._upload
        except BaseException as exc:
            raise self._translate(exc) from exc
        raise BackendError("multipart upload ended early", location=self._location)

    async def commit(self) -> str:
        """Finish the upload (PUT, or complete the multipart upload); return the location.

        On failure (or cancellation) the writer is aborted before the error propagates.
        """
        if self._state == "committed":
            return self._location
        if self._state != "open":
            raise BackendError(f"writer is {self._state}", location=self._location)
        try:
            if self._upload is None:
                held, self._held, self._held_bytes = self._held, [], 0
                # A list goes as one PUT, its pieces not joined.
                self._upload = asyncio.ensure_future(self._run(
                    obstore.put_async(self._store, self._key, held, use_multipart=False)))
            else:
                await self._send(None)
            await asyncio.shield(self._upload)
        except BaseException as exc:
            await self.abort()
            if isinstance(exc, Exception) and not isinstance(exc, BackendError):
                raise self._translate(exc) from exc
            raise
        self._state = "committed"
        return self._location

    async def abort(self) -> None:
        """Drop what was held and abort the multipart upload (its parts go). Safe to call twice.

        If the upload completed anyway (a commit cut short after the end mark or the PUT
        went out, as when the caller is cancelled), the object it made is deleted: nothing stays.
        """
        if self._state == "committed":
            return
        self._state = "aborted"
        self._held, self._held_bytes = [], 0
        upload, self._upload = self._upload, None
        if upload is None:
            return
        if not upload.done() and self._queue is not None:
            while not self._queue.empty():
                self._queue.get_nowait()  # pieces (or the end mark) not taken yet: never sent
            self._queue.put_nowait(_Aborted())  # harmless if the iterator has already ended
        try:
            # Shielded: a cancelled caller must not leave the upload half-done.
            await asyncio.shield(upload)
        except BaseException:
            if not upload.done():
                raise  # our caller was cancelled; the upload ends on its own
            return  # failed or aborted: S3 keeps nothing of it
        with contextlib.suppress(Exception):
            await asyncio.shield(obstore.delete_async(self._store, self._key))
