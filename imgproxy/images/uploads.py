"""Upload: ``PUT /v2/images/{image_id}/file``'s workflow.

The body streams once, never held whole in memory: counted against
``image_size_cap``, inspected as it passes (:mod:`imgproxy.formats`: data that contradicts
the declared ``disk_format`` or is unsafe is refused with 415 as soon as that is certain;
the verdict gives ``virtual_size``), cut into chunks that go into the cache (which hashes md5
``checksum``, sha512 ``os_hash_value`` and each chunk's address in the same pass) while the
same pieces go to the writable store. The image turns ``active`` only after
the store committed the bytes, in the transaction that records its manifest; any
failure (cap exceeded, client gone, store error, the finishing transaction itself)
aborts both and puts the image back to ``queued``, leaving nothing referenced.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from anyio import CancelScope

from backends import PIECE_SIZE, BackendError, UnknownStore, WriteBackend, Writer, local_file
from cache import OS_HASH_ALGO, Ingest, Manifest
from cache.ingest import DIGEST_DEPTH

from ..body_into import BodySource, IteratorBody

from ..context import RequestContext
from ..errors import BadRequest, Gone, MethodNotAllowed, PayloadTooLarge, ServiceUnavailable, UnsupportedMediaType
from ..formats import FormatInspector, FormatRefused, open_inspector
from .errors import store_error

if TYPE_CHECKING:
    from ..service import Service

__all__ = ["Uploads", "StoredData", "store_data", "inspector_for", "refused"]

log = logging.getLogger("imgproxy.data")

# Upload pieces are a multiple of the cache's chunk size near this: the cache then hashes
# and writes them without copying, and the store gets few large writes (a thread hop each).
UPLOAD_PIECE = 4 * PIECE_SIZE

# Piece buffers per upload: one being received, the rest queued for the digests (the md5
# lane, an upload's bound, must never wait for the receiver) and the store's write.
PIECES = DIGEST_DEPTH + 2

# While the format inspector may still refuse the data, the body is read in steps this big.
INSPECT_STEP = 64 * 1024


def _piece_size(chunk_size: int) -> int:
    if chunk_size > 4 * UPLOAD_PIECE:
        return UPLOAD_PIECE  # huge chunks: the cache copies pieces into its chunk buffer
    return chunk_size * max(1, UPLOAD_PIECE // chunk_size)


def _too_large(message: str) -> PayloadTooLarge:
    # The rest of the body is not read: the connection cannot carry another request.
    return PayloadTooLarge(message, headers={"Connection": "close"})


def refused(exc: FormatRefused, declared: str | None) -> UnsupportedMediaType:
    # Glance 33 answers 415 both for data that contradicts disk_format and for unsafe images.
    # The rest of the body is not read: the connection cannot carry another request.
    return UnsupportedMediaType(f"Image data refused (declared disk_format {declared}, detected "
                                f"{exc.detected or 'unknown'}): {exc.reason}", headers={"Connection": "close"})


class _Pieces:
    """An upload's piece buffers: page-aligned (anonymous maps), made as needed up to ``count``
    and reused. One is filled while the others are written and hashed; a buffer is lent
    again only once everything that reads it is done. Event loop only."""

    def __init__(self, size: int, count: int) -> None:
        self._size = size
        self._count = count
        self._made = 0
        self._free: list[memoryview] = []
        self._busy: deque[tuple[memoryview, asyncio.Future[Any]]] = deque()

    async def take(self) -> memoryview:
        if self._free:
            return self._free.pop()
        if self._made < self._count:
            self._made += 1
            return memoryview(mmap.mmap(-1, self._size))
        buffer, done = self._busy.popleft()
        await asyncio.wait([done])  # its outcome (an error) is the ingest's or writer's to raise
        return buffer

    def lend(self, buffer: memoryview, *readers: asyncio.Future[Any]) -> None:
        """``buffer`` is free again once every one of ``readers`` is done."""
        self._busy.append((buffer, asyncio.gather(*readers, return_exceptions=True)))


async def _read_piece(body: BodySource, buffer: memoryview, room: int, inspector: FormatInspector | None) -> int:
    """Fill ``buffer`` from ``body`` (at most ``room`` bytes); feed ``inspector`` as it comes,
    in steps of INSPECT_STEP while its verdict may still refuse the data (so a refusal comes
    as soon as it is certain, not a piece later)."""
    want = min(len(buffer), room)
    filled = 0
    while filled < want:
        step = want - filled
        if inspector is not None and not inspector.settled:
            step = min(step, INSPECT_STEP)
        got = await body.read_into(buffer[filled:filled + step])
        if inspector is not None and got:
            inspector.feed(buffer[filled:filled + got])  # raises FormatRefused once certain
        filled += got
        if got < step:
            break
    return filled


async def _receive_into(body: BodySource, writer: Writer, ingest: Ingest, cap: int,
                        inspector: FormatInspector | None = None) -> int:
    """Stream ``body`` into ``writer`` and ``ingest`` in pieces of ``_piece_size``; return its size.

    Each byte is copied once in Python: into a reused, page-aligned piece buffer (by the
    protocol, :mod:`imgproxy.body_into`), which the store writes and the cache hashes in
    place. The store's writes run while the next pieces are received (as many at once as
    the writer takes: ``writes_in_flight``, default 1); the cache hashes and writes in its
    own threads. Raises PayloadTooLarge past ``cap``, whatever ``body``
    raises (the client went away), BackendError from the store.
    """
    pieces = _Pieces(_piece_size(ingest.chunk_size), PIECES)
    depth = getattr(writer, "writes_in_flight", 1)
    writes: deque[asyncio.Future[None]] = deque()
    size = 0
    try:
        while True:
            buffer = await pieces.take()
            got = await _read_piece(body, buffer, cap + 1 - size, inspector)
            size += got
            if size > cap:
                raise _too_large(f"Image exceeds the storage quota: the limit is {cap} bytes.")
            if not got:
                break
            piece = buffer[:got]
            while len(writes) >= depth:
                await writes.popleft()
            writing = asyncio.ensure_future(writer.write(piece))  # started in order, written in order
            writes.append(writing)
            hashed = await ingest.feed_held(piece)
            pieces.lend(buffer, writing, hashed)
            if got < len(buffer):
                break
        while writes:
            await writes.popleft()
    finally:
        if writes:
            # Failing already: let the store's writes end (their errors are secondary) before
            # the caller aborts the writer, which is not safe for concurrent use.
            with CancelScope(shield=True):
                await asyncio.wait(writes)
                for writing in writes:
                    if not writing.cancelled():
                        writing.exception()  # retrieved: not logged as never retrieved
    return size


@dataclass(frozen=True, slots=True)
class StoredData:
    """Image data a store committed: its size, its manifest (not yet recorded), its location,
    and the virtual size its format inspection found (None when not inspected)."""

    size: int
    manifest: Manifest
    location: str
    virtual_size: int | None = None


def inspector_for(record: dict[str, Any]) -> FormatInspector | None:
    """The format inspector for an image's data: Glance inspects bare data only (a
    container's own format is not the disk's)."""
    if record.get("container_format") != "bare" or not record.get("disk_format"):
        return None
    return open_inspector(record["disk_format"])


async def store_data(service: "Service", image_id: str, body: BodySource | AsyncIterator[bytes], store: WriteBackend, cap: int,
                     declared: int | None, inspector: FormatInspector | None = None) -> StoredData:
    """Stream ``body`` once into ``store`` and the cache (which hashes it), inspecting its
    format on the way (with ``inspector``), then commit both.

    Raises PayloadTooLarge past ``cap``, BadRequest when ``declared`` is given and the body
    differs, FormatRefused (data that contradicts its disk_format, or unsafe), BackendError
    from the store, and whatever ``body`` raises. On any failure (and cancellation) nothing
    is kept: the store's writer and the cache's ingest are aborted.
    """
    writer = await store.open_writer(image_id)
    # A local file store is read in place (verified against the manifest): caching its
    # chunks too would write every byte twice.
    ingest = service.cache.open_ingest(image_id, keep_chunks=local_file(store, store.location_for(image_id)) is None)
    try:
        source = IteratorBody(body) if isinstance(body, AsyncIterator) else body
        size = await _receive_into(source, writer, ingest, cap, inspector)
        if declared is not None and size != declared:
            raise BadRequest(f"Expected {declared} bytes of image data, received {size}.")
        virtual_size = None
        if inspector is not None:
            verdict = inspector.finish(size)
            if verdict.refusal is not None:
                raise verdict.refusal
            virtual_size = verdict.virtual_size
        manifest = await ingest.finish()
        location = await writer.commit()
    except BaseException:
        with CancelScope(shield=True):
            await ingest.abort()
            await writer.abort()
        raise
    return StoredData(size, manifest, location, virtual_size)


# Seconds a client refused for too many uploads is told to wait.
RETRY_AFTER = 5


class Uploads:
    """The upload workflow of one process. Lives on the event loop (not thread-safe).

    At most ``max_uploads`` uploads run at once (each holds store and cache writers,
    threads and a few chunks of memory); more are refused before anything changes.
    """

    def __init__(self, service: "Service") -> None:
        self._s = service
        self.active = 0

    async def upload(self, ctx: RequestContext, image_id: str, body: BodySource | AsyncIterator[bytes],
                     declared: int | None, *, store: str | None = None) -> None:
        """Store ``body`` as the data of a queued image, in ``store`` (an id; None: the
        default store), and make it active.

        ``declared`` is the Content-Length (None when chunked). Raises BadRequest (a store
        not configured, checked first, as Glance; a short body), NotFound, Forbidden,
        MethodNotAllowed (read-only store), PayloadTooLarge, ServiceUnavailable (too many
        uploads running; the image stays queued), Conflict (not queued), Gone (deleted
        meanwhile), a store error; and whatever ``body`` raises when the client goes away.
        On any failure the image is queued again and nothing of the body is kept.
        """
        service = self._s
        name = service.backends.default_name if store is None else store
        try:
            writable = service.backends.writable(name)
        except UnknownStore:
            raise BadRequest(f"Store '{name[:64]}' is not configured; "
                             f"the stores are {', '.join(service.backends.names)}.") from None
        record = service.registry.get_visible(ctx, image_id)
        service.registry.check_modify(ctx, record)
        if writable is None:
            raise MethodNotAllowed(
                f"The image store {name} is read-only; image data cannot be uploaded to it.",
                headers={"Allow": "GET, HEAD"},
            )
        if record.get("disk_format") is None or record.get("container_format") is None:
            raise BadRequest("Properties disk_format and container_format must be set prior to uploading "
                             "image data.")
        cap = service.settings.image_size_cap
        if declared is not None and declared > cap:
            raise _too_large(f"Image of {declared} bytes exceeds the storage quota of {cap} bytes.")
        async with self.slot():
            await service.writer.run(service.registry.begin_upload, ctx, image_id, name)  # 409 unless queued
            await self._store_body(body, name, writable, image_id, cap, declared, inspector_for(record),
                                   record["disk_format"])

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One of the ``max_uploads`` receiving slots (uploads and glance-direct stages);
        ServiceUnavailable (503, Retry-After) when all are taken."""
        limit = self._s.settings.max_uploads
        if self.active >= limit:
            raise ServiceUnavailable(
                f"This server is receiving {limit} uploads already; retry in a few seconds.",
                headers={"Retry-After": str(RETRY_AFTER), "Connection": "close"},
            )
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    async def _fail(self, image_id: str) -> None:
        await self._s.writer.run(self._s.registry.fail_upload, image_id)

    async def _store_body(self, body: BodySource | AsyncIterator[bytes], name: str, store: WriteBackend, image_id: str,
                          cap: int, declared: int | None, inspector: FormatInspector | None,
                          disk_format: str) -> None:
        """Write the body, commit, activate."""
        try:
            stored = await store_data(self._s, image_id, body, store, cap, declared, inspector)
        except BaseException as exc:
            with CancelScope(shield=True):
                await self._fail(image_id)
            if isinstance(exc, BackendError):
                raise store_error(exc, "store the image data") from exc
            if isinstance(exc, FormatRefused):
                raise refused(exc, disk_format) from exc
            raise
        await self._activate(name, store, image_id, stored.size, stored.manifest, stored.location,
                             stored.virtual_size)

    async def _activate(self, name: str, store: WriteBackend, image_id: str, size: int, manifest: Manifest,
                        location: str, virtual_size: int | None) -> None:
        service = self._s
        assert manifest.checksum is not None and manifest.os_hash_value is not None
        try:
            active = await service.writer.run(lambda: service.registry.finish_upload(
                image_id,
                size=size,
                checksum=manifest.checksum,  # type: ignore[arg-type]
                os_hash_algo=OS_HASH_ALGO,
                os_hash_value=manifest.os_hash_value,  # type: ignore[arg-type]
                location=location,
                virtual_size=virtual_size,
                store=name,
                also=lambda txn: service.cache.record_manifest(txn, image_id, manifest),
            ))
        except BaseException:
            # The finishing transaction failed (disk, map full, ...): its bytes go, and the
            # image is queued again for another upload, not left saving with a live owner.
            with CancelScope(shield=True):
                await self._fail(image_id)
                await self._delete_quietly(store, location)
            raise
        if active is None:
            # Deleted (or otherwise moved on) while we were receiving: its bytes must go too.
            await self._delete_quietly(store, location)
            raise Gone(f"Image {image_id} could not be found after upload; it may have been deleted during the upload.")

    @staticmethod
    async def _delete_quietly(store: WriteBackend, location: str) -> None:
        try:
            await store.delete(location)
        except BackendError:
            # The cleaner finds objects no image points to; the request's answer stands.
            log.warning("could not delete orphaned image data at %s", location, exc_info=True)
