"""In-line verification of images registered by location with validation data.

Such an image is ``active`` at once, with digests the client gave but nobody checked.
A whole read of it must not complete before they are: the first one in a process hashes
the bytes as they stream (md5 + sha512 on niced lane threads, while each piece is being
sent) and holds back the last byte; when the digests match it records the pass done and
sends the byte; when they differ the image is killed (as the verify pass would) and the
response is cut, so no client ever receives a complete body of wrong bytes. Other whole
reads in the same process meanwhile hold their last byte until that verdict; if the
verifying reader goes away first, they wait for the background verify pass
(:meth:`imgproxy.locations.LocationPasses.settle`), which mostly reads cached chunks by then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from cache import ImageDigests

from .errors import ImageDataError

if TYPE_CHECKING:
    from ..service import Service

__all__ = ["InlineVerifier"]

log = logging.getLogger("imgproxy.locations")

Piece = bytes | memoryview


def _split_last(piece: Piece, sent: int, size: int) -> tuple[Piece, Piece]:
    """``(to send, held back)``: the image's last byte stays behind. Both keep the piece's
    type (a ``memoryview`` is a fill's bytes, which the request log tells from the cache's)."""
    if sent < size:
        return piece, b""
    return piece[:-1], piece[-1:]


class InlineVerifier:
    """Wraps whole reads of images that owe a verify pass. One per process; lives on
    the event loop (not thread-safe)."""

    def __init__(self, service: "Service") -> None:
        self._s = service
        # image id -> the verdict of the read verifying it here: True (matches), False
        # (does not; killed), None (the read ended before the last byte).
        self._verdicts: dict[str, asyncio.Future[bool | None]] = {}

    def owed(self, image_id: str, url: str) -> bool:
        """Whether whole reads of the image at ``url`` are verified in line (it owes a verify pass)."""
        return self._s.registry.owed_pass(image_id) == (url, "verify")

    def wrap(self, record: dict[str, Any], url: str, size: int, body: AsyncIterator[Piece]) -> AsyncIterator[Piece]:
        """``body`` (the whole image) verified as described in the module; unchanged when
        no verify pass is owed."""
        image_id: str = record["id"]
        if not self.owed(image_id, url):
            return body
        verdict = self._verdicts.get(image_id)
        if verdict is None:
            verdict = asyncio.get_running_loop().create_future()
            self._verdicts[image_id] = verdict
            return self._verifying(record, url, size, body, verdict)
        return self._holding(image_id, size, body, verdict)

    async def _verifying(self, record: dict[str, Any], url: str, size: int, body: AsyncIterator[Piece],
                         verdict: asyncio.Future[bool | None]) -> AsyncIterator[Piece]:
        image_id: str = record["id"]
        digests = ImageDigests(background=True)  # an image already in service: serving comes first
        result: bool | None = None
        try:
            sent = 0
            held: Piece = b""
            async for piece in body:
                hashed = asyncio.wrap_future(digests.submit(piece))
                sent += len(piece)
                out, held = _split_last(piece, sent, size)
                if out:
                    yield out  # sent while its bytes are hashed
                await hashed  # the piece must not change before it is hashed
            result = await self._s.locations.conclude_verify(record, url, digests)
            verdict.set_result(result)
            if not result:
                raise ImageDataError("the image data does not match its validation data; the image is killed",
                                     image_id=image_id, offset=size - 1, corrupt=True)
            if held:
                yield held
        finally:
            digests.close()
            if not verdict.done():
                verdict.set_result(result)
            if self._verdicts.get(image_id) is verdict:
                del self._verdicts[image_id]
            await body.aclose()  # type: ignore[attr-defined]

    async def _holding(self, image_id: str, size: int, body: AsyncIterator[Piece],
                       verdict: asyncio.Future[bool | None]) -> AsyncIterator[Piece]:
        try:
            sent = 0
            held: Piece = b""
            async for piece in body:
                sent += len(piece)
                out, held = _split_last(piece, sent, size)
                if out:
                    yield out
            result = await asyncio.shield(verdict)
            if result is None:
                result = await self._s.locations.settle(image_id)
            if not result:
                raise ImageDataError("the image data could not be verified against its validation data",
                                     image_id=image_id, offset=size - 1, corrupt=result is False)
            if held:
                yield held
        finally:
            await body.aclose()  # type: ignore[attr-defined]
