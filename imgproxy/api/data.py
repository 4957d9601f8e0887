"""Image data: ``PUT``/``GET``/``HEAD /v2/images/{image_id}/file``.

Upload streams the body once, never held whole in memory: counted against
``image_size_cap``, cut into chunks that go into the cache (which hashes md5
``checksum``, sha512 ``os_hash_value`` and each chunk's address in the same pass)
while the same pieces go to the writable store. The image turns ``active`` only
after the store committed the bytes, in the transaction that records its manifest;
any failure (cap exceeded, client gone, store error) aborts both and puts the
image back to ``queued``, leaving nothing referenced.

Download reads through the cache, whole or one ``Range``: cached chunks from disk,
missing ones from a fill shared by every reader. A failure after the status line
was sent aborts the connection, so a client never mistakes a truncated body for a
complete one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from anyio import CancelScope
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from backends import PIECE_SIZE, BackendError, BackendUnavailable, ByteRange, WriteBackend, Writer
from cache import OS_HASH_ALGO, CacheError, Ingest, UpstreamCorrupt

from .. import policy
from ..errors import (
    ApiError,
    BadGateway,
    BadRequest,
    Forbidden,
    Gone,
    MethodNotAllowed,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from ..ranges import content_range, parse_range
from ..memory import IdleTrimmer
from ..service import Service
from ..sources import resolve_source

__all__ = ["routes", "upload", "download"]

log = logging.getLogger("imgproxy.data")

_NO_DATA_STATUSES = frozenset({"queued", "saving"})


def _cache_error(exc: CacheError) -> ApiError:
    """A read through the cache failed before any byte was sent."""
    if isinstance(exc, UpstreamCorrupt):
        return BadGateway(f"The image store returned data that does not match the image: {exc}")
    return ServiceUnavailable(f"The image data could not be read from its store: {exc}")


def _store_error(exc: BackendError, action: str) -> ApiError:
    """The one mapping of store errors to HTTP for this module."""
    if isinstance(exc, BackendUnavailable):
        return ServiceUnavailable(f"The image store is unavailable; could not {action}: {exc}")
    return ApiError(f"The image store failed; could not {action}: {exc}")


# ---- upload -------------------------------------------------------------------------


def _declared_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None  # chunked: counted while reading
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"Invalid Content-Length {raw!r}") from None
    if value < 0:
        raise BadRequest(f"Invalid Content-Length {raw!r}")
    return value


# Upload pieces are a multiple of the cache's chunk size near this: the cache then hashes
# and writes them without copying, and the store gets few large writes (a thread hop each).
UPLOAD_PIECE = 4 * PIECE_SIZE


def _piece_size(chunk_size: int) -> int:
    if chunk_size > 4 * UPLOAD_PIECE:
        return UPLOAD_PIECE  # huge chunks: the cache copies pieces into its chunk buffer
    return chunk_size * max(1, UPLOAD_PIECE // chunk_size)


async def _receive_into(request: Request, writer: Writer, ingest: Ingest, cap: int) -> int:
    """Stream the body into ``writer`` and ``ingest`` in pieces of ``_piece_size``; return its size.

    Each byte is copied once in Python (joining the received parts into a piece). One
    store write runs while the next piece is received; the cache hashes and writes in
    its own threads. Raises PayloadTooLarge past ``cap``, ClientDisconnect if the
    client goes away (a short body ends that way too), BackendError from the store.
    """
    piece_size = _piece_size(ingest.chunk_size)
    size = held = 0
    parts: list[memoryview] = []
    writing: asyncio.Future[None] | None = None

    async def flush() -> None:
        nonlocal writing, held
        piece = b"".join(parts)
        parts.clear()
        held = 0
        if writing is not None:
            await writing  # the writer takes one write at a time
        writing = asyncio.ensure_future(writer.write(piece))
        await ingest.feed(piece)

    try:
        async for part in request.stream():
            size += len(part)
            if size > cap:
                raise PayloadTooLarge(
                    f"Image exceeds the storage quota: the limit is {cap} bytes.", headers={"Connection": "close"}
                )
            view = memoryview(part)
            while held + len(view) >= piece_size:
                take = piece_size - held
                parts.append(view[:take])
                view = view[take:]
                await flush()
            if view:
                parts.append(view)
                held += len(view)
        if parts:
            await flush()
        if writing is not None:
            pending, writing = writing, None
            await pending
    finally:
        if writing is not None:
            # Failing already: let the store write end (its error is secondary) before the
            # caller aborts the writer, which is not safe for concurrent use.
            with CancelScope(shield=True):
                try:
                    await writing
                except BaseException:
                    pass
    return size


async def upload(request: Request) -> Response:
    """``PUT /v2/images/{image_id}/file``: 204 once the image is active."""
    service: Service = request.app.state.service
    ctx = request.state.context
    image_id: str = request.path_params["image_id"]

    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/octet-stream":
        raise UnsupportedMediaType(
            f"Content-Type {media_type or '(none)'!r} is not supported for image data; "
            "use application/octet-stream."
        )
    record = service.registry.get_visible(ctx, image_id)
    service.registry.check_modify(ctx, record)
    store = service.backends.writable
    if store is None:
        raise MethodNotAllowed(
            "The configured image store is read-only; image data cannot be uploaded here.",
            headers={"Allow": "GET, HEAD"},
        )
    cap = service.settings.image_size_cap
    declared = _declared_length(request)
    if declared is not None and declared > cap:
        raise PayloadTooLarge(
            f"Image of {declared} bytes exceeds the storage quota of {cap} bytes.", headers={"Connection": "close"}
        )
    service.registry.begin_upload(ctx, image_id)  # 409 unless queued
    location = await _store_body(request, service, store, image_id, cap, declared)
    return Response(status_code=204) if location else Response(status_code=400)


async def _store_body(
    request: Request, service: Service, store: WriteBackend, image_id: str, cap: int, declared: int | None
) -> str | None:
    """Write the body, commit, activate. Returns the location, or None if the client left."""
    try:
        writer = await store.open_writer(image_id)
    except BackendError as exc:
        service.registry.fail_upload(image_id)
        raise _store_error(exc, "store the image data") from exc
    ingest = service.cache.open_ingest(image_id)
    try:
        size = await _receive_into(request, writer, ingest, cap)
        if declared is not None and size != declared:
            raise BadRequest(f"Expected {declared} bytes of image data, received {size}.")
        manifest = await ingest.finish()
        location = await writer.commit()
    except BaseException as exc:
        # Whatever ended the upload (client gone, cap, store, cancellation), nothing stays.
        with CancelScope(shield=True):
            await ingest.abort()
            await writer.abort()
            service.registry.fail_upload(image_id)
        if isinstance(exc, ClientDisconnect):
            log.info("upload of %s abandoned by the client; image is queued again", image_id)
            return None
        if isinstance(exc, BackendError):
            raise _store_error(exc, "store the image data") from exc
        raise

    assert manifest.checksum is not None and manifest.os_hash_value is not None
    try:
        active = service.registry.finish_upload(
            image_id,
            size=size,
            checksum=manifest.checksum,
            os_hash_algo=OS_HASH_ALGO,
            os_hash_value=manifest.os_hash_value,
            location=location,
            also=lambda txn: service.cache.record_manifest(txn, image_id, manifest),
        )
    except BaseException:
        with CancelScope(shield=True):
            await _delete_quietly(store, location)
        raise
    if active is None:
        # Deleted (or otherwise moved on) while we were receiving: its bytes must go too.
        await _delete_quietly(store, location)
        raise Gone(f"Image {image_id} could not be found after upload; it may have been deleted during the upload.")
    return location


async def _delete_quietly(store: WriteBackend, location: str) -> None:
    try:
        await store.delete(location)
    except BackendError:
        # The reaper finds objects no image points to; the request's answer stands.
        log.warning("could not delete orphaned image data at %s", location, exc_info=True)


# ---- download -----------------------------------------------------------------------


class ImageDataResponse(Response):
    """Streams image pieces from the cache; closes the iterator whatever happens.

    A cache error after the status line was sent is re-raised so the server drops
    the connection (the body is shorter than its Content-Length: the client sees
    an error, never a clean short response). A client that goes away ends the
    stream quietly.
    """

    def __init__(
        self, first: bytes | memoryview, rest: AsyncIterator[bytes | memoryview], status_code: int, headers: dict[str, str],
        trimmer: IdleTrimmer,
    ) -> None:
        self._trimmer = trimmer
        self._first = first
        self._rest = rest
        self.status_code = status_code
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._trimmer.begin()
        try:
            try:
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                if self._first:
                    await send({"type": "http.response.body", "body": self._first, "more_body": True})
                self._first = b""
                async for piece in self._rest:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:
                return  # the client went away (uvicorn raises ClientDisconnected, an OSError)
            except CacheError as exc:
                log.error("image %s data stream failed mid-response at offset %d: %s", exc.image_id, exc.offset, exc)
                raise
        finally:
            self._trimmer.end()
            await self._rest.aclose()  # type: ignore[attr-defined]


async def download(request: Request) -> Response:
    """``GET``/``HEAD /v2/images/{image_id}/file``: 200, 206, 204 (no data), 403, 404, 416."""
    service: Service = request.app.state.service
    ctx = request.state.context
    image_id: str = request.path_params["image_id"]

    record = service.registry.get_visible(ctx, image_id)
    policy.check_download(ctx)
    if record.get("status") == "deactivated" and not ctx.is_admin:
        raise Forbidden("The requested image has been deactivated. Image data download is forbidden.")
    if record.get("status") in _NO_DATA_STATUSES:
        return Response(status_code=204)
    try:
        source = await resolve_source(service, record)
    except BackendError as exc:
        raise _store_error(exc, "read the image data") from exc
    if source is None:
        return Response(status_code=204)
    size = source.manifest.size

    # If-Range names a validator we never send, so it cannot match: serve everything.
    range_header = None if "if-range" in request.headers else request.headers.get("range")
    byte_range = parse_range(range_header, size)
    headers = _download_headers(record, size, byte_range)
    status = 200 if byte_range is None else 206
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)

    wanted = byte_range or ByteRange(0, size)
    if wanted.length == size:
        service.locations.full_read(image_id)  # a verify pass owed rides along this read
    body = service.cache.read(image_id, source.manifest, wanted, source.backend, source.location)
    try:
        # Read the first piece before answering, so a missing object or a dead store
        # is an HTTP error rather than a dropped connection.
        first = await _first_piece(body, wanted)
    except CacheError as exc:
        await body.aclose()  # type: ignore[attr-defined]
        raise _cache_error(exc) from exc
    return ImageDataResponse(first, body, status, headers, service.trimmer)


async def _first_piece(body: AsyncIterator[bytes | memoryview], wanted: ByteRange) -> bytes | memoryview:
    if wanted.length == 0:
        return b""
    try:
        return await body.__anext__()
    except StopAsyncIteration:
        raise CacheError("the cache returned no data") from None


def _download_headers(record: dict[str, Any], size: int, byte_range: ByteRange | None) -> dict[str, str]:
    headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
    if byte_range is None:
        headers["Content-Length"] = str(size)
        # Glance sends the hex md5 (not RFC 1864's base64); clients check it.
        if record.get("checksum"):
            headers["Content-MD5"] = record["checksum"]
    else:
        # The image md5 is not the digest of a part, so a 206 carries none.
        headers["Content-Length"] = str(byte_range.length)
        headers["Content-Range"] = content_range(byte_range, size)
    return headers


routes: list[BaseRoute] = [
    Route("/v2/images/{image_id}/file", upload, methods=["PUT"]),
    Route("/v2/images/{image_id}/file", download, methods=["GET", "HEAD"]),
]
