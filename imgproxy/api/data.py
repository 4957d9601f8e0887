"""Image data routes: ``PUT``/``GET``/``HEAD /v2/images/{image_id}/file``.

The workflows (streaming an upload into the cache and the store; reading through the
cache, verifying a first whole read) are :mod:`imgproxy.images`. Here: the request's
headers, and the streaming response, which is cut when the image's bytes fail after
its status line was sent (the body is then shorter than its Content-Length, so a
client sees an error, never a clean short response).

Verified chunks on local disk arrive as :class:`FileSlice`\ s: sent with the ASGI
``http.response.zerocopysend`` extension where the server offers it (``imgproxy serve``
does, :mod:`imgproxy.zerocopy`), else read with ``pread`` pieces and sent as bytes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.utils import ClientDisconnected

from ..body_into import body_source
from ..errors import BadRequest, UnsupportedMediaType
from ..images import PIECE_SIZE, Download, FileSlice, ImageDataError
from ..memory import IdleTrimmer
from ..zerocopy import ZEROCOPY
from .common import caller, path_image_id, service_of

__all__ = ["routes", "upload", "download", "download_headers", "download_response", "ImageDataResponse"]

log = logging.getLogger("imgproxy.data")

# What ``send`` raises when the client has gone: uvicorn's ClientDisconnected, Starlette's
# ClientDisconnect, and the socket's own errors. Any other error is a real failure.
CLIENT_GONE = (ClientDisconnected, ClientDisconnect, ConnectionResetError, BrokenPipeError)


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


async def upload(request: Request) -> Response:
    """``PUT /v2/images/{image_id}/file``: 204 once the image is active; ``X-Image-Meta-Store``
    names the store it goes to (default: the default store)."""
    image_id = path_image_id(request)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/octet-stream":
        raise UnsupportedMediaType(
            f"Content-Type {media_type or '(none)'!r} is not supported for image data; "
            "use application/octet-stream."
        )
    uploads = service_of(request).images.uploads
    try:
        await uploads.upload(caller(request), image_id, body_source(request), _declared_length(request),
                             store=request.headers.get("x-image-meta-store"))
    except ClientDisconnect:
        log.info("upload of %s abandoned by the client; image is queued again", image_id)
        return Response(status_code=400)
    return Response(status_code=204)


# ---- download -----------------------------------------------------------------------


class ImageDataResponse(Response):
    """Streams an opened :class:`Download`; closes its body whatever happens.

    An :class:`ImageDataError` (or any other error reading the body) after the status
    line was sent is logged with the image id and re-raised, so the server drops the
    connection. A client that goes away (``send`` raises one of ``CLIENT_GONE``) ends
    the stream quietly.
    """

    def __init__(self, download: Download, status_code: int, headers: dict[str, str], trimmer: IdleTrimmer) -> None:
        assert download.body is not None
        self._trimmer = trimmer
        self._image_id: str = download.record["id"]
        self._first = download.first
        self._rest: AsyncIterator[bytes | memoryview | FileSlice] = download.body
        self.status_code = status_code
        self.background = None
        self.init_headers(headers)
        self._zero_copy = False

    async def _send_body(self, send: Send, piece: bytes | memoryview | FileSlice, more: bool) -> bool:
        """Send one piece; False if the client has gone."""
        try:
            if not isinstance(piece, FileSlice):
                await send({"type": "http.response.body", "body": piece, "more_body": more})
            elif self._zero_copy:
                await send({"type": ZEROCOPY, "file": piece.fd, "offset": piece.offset, "count": piece.count,
                            "more_body": more})
            else:
                end = piece.offset + piece.count
                for start in range(piece.offset, end, PIECE_SIZE):
                    data = os.pread(piece.fd, min(PIECE_SIZE, end - start), start)
                    if len(data) != min(PIECE_SIZE, end - start):
                        raise ImageDataError("a verified file ended early", image_id=self._image_id)
                    await send({"type": "http.response.body", "body": data, "more_body": True})
        except CLIENT_GONE:
            return False
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._zero_copy = ZEROCOPY in scope.get("extensions", {})
        self._trimmer.begin()
        try:
            try:
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            except CLIENT_GONE:
                return
            if self._first and not await self._send_body(send, self._first, True):
                return
            self._first = b""
            try:
                async for piece in self._rest:
                    if not await self._send_body(send, piece, True):
                        return
            except ImageDataError as exc:
                log.error("image %s data stream failed mid-response at offset %s: %s; connection cut",
                          exc.image_id, exc.offset, exc)
                raise
            except Exception:
                log.exception("image %s data stream failed mid-response; connection cut", self._image_id)
                raise
            await self._send_body(send, b"", False)
        finally:
            self._trimmer.end()
            await self._rest.aclose()  # type: ignore[attr-defined]


async def download(request: Request) -> Response:
    """``GET``/``HEAD /v2/images/{image_id}/file``: 200, 206, 204 (no data), 403, 404, 416."""
    service = service_of(request)
    # If-Range names a validator we never send, so it cannot match: serve everything.
    range_header = None if "if-range" in request.headers else request.headers.get("range")
    head = request.method == "HEAD"
    prefer = [s.strip() for s in request.query_params.get("prefer", "").split(",") if s.strip()]
    opened = await service.images.downloads.open(caller(request), path_image_id(request), range_header, head=head,
                                                 prefer=prefer)
    if opened is None:
        return Response(status_code=204)
    return download_response(opened, service.trimmer)


def download_response(opened: Download, trimmer: IdleTrimmer) -> Response:
    """The response of an opened download: 200 or 206 with its headers; its body streamed
    (none for HEAD)."""
    status = 200 if opened.content_range is None else 206
    headers = download_headers(opened)
    if opened.body is None:
        return Response(status_code=status, headers=headers)
    return ImageDataResponse(opened, status, headers, trimmer)


def download_headers(opened: Download) -> dict[str, str]:
    headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes",
               "Content-Length": str(opened.length)}
    record: dict[str, Any] = opened.record
    if opened.content_range is None:
        # Glance sends the hex md5 (not RFC 1864's base64); clients check it.
        if record.get("checksum"):
            headers["Content-MD5"] = record["checksum"]
    else:
        # The image md5 is not the digest of a part, so a 206 carries none.
        headers["Content-Range"] = opened.content_range
    return headers


routes: list[BaseRoute] = [
    Route("/v2/images/{image_id}/file", upload, methods=["PUT"]),
    Route("/v2/images/{image_id}/file", download, methods=["GET", "HEAD"]),
]
