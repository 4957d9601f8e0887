"""The cache's exception tree. The HTTP layer maps these once; nothing else escapes a read.

A read that cannot deliver every requested byte raises one of these mid-stream: the
caller must abort the response (never finish it short).
"""

from __future__ import annotations

__all__ = ["CacheError", "UpstreamFailed", "UpstreamCorrupt", "CorruptChunk"]


class CacheError(Exception):
    """The cache could not deliver bytes; ``image_id`` and ``offset`` say where it stopped."""

    def __init__(self, message: str, *, image_id: str = "", offset: int = 0) -> None:
        super().__init__(message)
        self.image_id = image_id
        self.offset = offset


class UpstreamFailed(CacheError):
    """The image's store failed (after the bounded retries) or no longer has the object."""


class UpstreamCorrupt(CacheError):
    """The store returned bytes that do not match the manifest's chunk address."""


class CorruptChunk(CacheError):
    """A cached chunk file failed verification; it has been removed. Internal: readers refill."""
