"""Download: ``GET``/``HEAD /v2/images/{image_id}/file``'s workflow.

Reads go through the cache, whole or one ``Range``: cached chunks from disk, missing
ones from a fill shared by every reader. The first piece is read before the response
begins, so a missing object or a dead store is an HTTP error; a failure after that is
an :class:`ImageDataError`, on which the response is cut (the body is shorter than its
Content-Length, so the client sees an error, never a clean short response). A whole
read of an image whose validation data is not yet checked is verified in line
(:mod:`imgproxy.images.verify`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from backends import PIECE_SIZE, BackendError, ByteRange
from cache import CacheError, FileSlice, UpstreamCorrupt

from .. import policy
from ..context import RequestContext
from ..errors import ApiError, BadRequest, Forbidden, NotFound
from ..ranges import content_range, parse_range
from ..sources import resolve_source
from .errors import ImageDataError, data_error, store_error
from .verify import InlineVerifier

if TYPE_CHECKING:
    from ..service import Service

__all__ = ["Download", "Downloads", "FileSlice", "Piece", "PIECE_SIZE", "open_download", "translated"]

_NO_DATA_STATUSES = frozenset({"queued", "saving"})

# A FileSlice is a verified range of a file on local disk, which the response sends
# without copying it (see imgproxy.api.data).
Piece = bytes | memoryview | FileSlice


@dataclass
class Download:
    """An opened download. ``body`` (None for HEAD) yields the pieces after ``first``;
    whoever takes it must close it (``aclose``) whatever happens, and cut the response
    on :class:`ImageDataError`."""

    record: dict[str, Any]
    size: int  # the whole image's
    length: int  # bytes this response carries
    content_range: str | None  # None: the whole image (200), else the 206's Content-Range
    first: Piece
    body: AsyncIterator[Piece] | None


P = TypeVar("P", bytes | memoryview, Piece)


async def translated(image_id: str, start: int, body: AsyncIterator[P]) -> AsyncIterator[P]:
    """``body`` with the cache's errors and I/O errors turned into :class:`ImageDataError`."""
    offset = start
    try:
        async for piece in body:
            yield piece
            offset += len(piece)
    except CacheError as exc:
        raise ImageDataError(str(exc), image_id=image_id, offset=exc.offset or offset,
                             corrupt=isinstance(exc, UpstreamCorrupt)) from exc
    except OSError as exc:
        raise ImageDataError(f"reading the image data failed: {exc!r}", image_id=image_id, offset=offset) from exc
    finally:
        await body.aclose()  # type: ignore[attr-defined]


async def open_download(record: dict[str, Any], size: int, range_header: str | None,
                        open_body: Callable[[ByteRange], AsyncIterator[Piece]], *, head: bool = False,
                        error: Callable[[ImageDataError], ApiError] = data_error) -> Download:
    """The download of ``record``'s ``size`` bytes, whole or the one range ``range_header``
    asks for (None: the whole image), once the caller may read them: the service's and
    the edge's.

    ``open_body(wanted)`` opens the pieces of ``wanted`` (not called for ``head``); the
    cache's errors and I/O errors in it become :class:`ImageDataError`. Its first piece
    is read here, so a dead store is an HTTP error (``error`` of it), not a cut. Raises
    RangeNotSatisfiable for a range past the end.
    """
    image_id: str = record["id"]
    byte_range = parse_range(range_header, size)
    wanted = byte_range or ByteRange(0, size)
    crange = None if byte_range is None else content_range(byte_range, size)
    if head:
        return Download(record, size, wanted.length, crange, b"", None)
    body = translated(image_id, wanted.start, open_body(wanted))
    try:
        first = await body.__anext__() if wanted.length else b""
    except StopAsyncIteration:
        await body.aclose()  # type: ignore[attr-defined]
        raise error(ImageDataError("the cache returned no data", image_id=image_id, offset=0)) from None
    except ImageDataError as exc:
        await body.aclose()  # type: ignore[attr-defined]
        raise error(exc) from exc
    return Download(record, size, wanted.length, crange, first, body)


class Downloads:
    """The download workflow of one process."""

    def __init__(self, service: "Service") -> None:
        self._s = service
        self.verifier = InlineVerifier(service)

    async def open(self, ctx: RequestContext, image_id: str, range_header: str | None, *,
                   head: bool = False, prefer: Sequence[str] = ()) -> Download | None:
        """Open the image's data for ``ctx``; None when it has none (queued, saving, killed).

        ``range_header`` is the request's ``Range`` (None for the whole image; pass None
        when an ``If-Range`` cannot match). ``prefer``: store ids whose copies are read
        first (Glance's ``?prefer=``; BadRequest for a store not configured). Raises
        NotFound (also for a pending_delete image), Forbidden (deactivated, for non-admins;
        readers, who may not download), RangeNotSatisfiable, a store error, or the error of
        the first piece.
        """
        service = self._s
        for store in prefer:
            if store not in service.backends.configs:
                raise BadRequest(f"Store '{store[:64]}' is not configured.")
        record = service.registry.get_visible(ctx, image_id)
        policy.check_download(ctx)
        if record.get("status") == "deactivated" and not ctx.is_admin:
            raise Forbidden("The requested image has been deactivated. Image data download is forbidden.")
        if record.get("status") == "pending_delete":
            raise NotFound(f"Image {image_id} is deleted (pending_delete); its data cannot be downloaded.")
        if record.get("status") in _NO_DATA_STATUSES:
            return None
        try:
            source = await resolve_source(service, record, prefer)
        except BackendError as exc:
            raise store_error(exc, "read the image data") from exc
        if source is None:
            return None
        location = source.location

        def body(wanted: ByteRange) -> AsyncIterator[Piece]:
            if wanted.length == source.manifest.size and self.verifier.owed(image_id, location):
                # A read verified in line hashes every byte it sends: bytes, not file slices.
                raw = service.cache.read(image_id, source.manifest, wanted, source.backend, location)
                return self.verifier.wrap(record, location, wanted.length, raw)
            return service.cache.read_slices(image_id, source.manifest, wanted, source.backend, location)

        return await open_download(record, source.manifest.size, range_header, body, head=head)
