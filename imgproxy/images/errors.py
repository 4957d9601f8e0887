"""Errors of the image service, and the one translation of store and cache errors.

The image service is the boundary between the API and ``backends``/``cache``: their
errors are turned into :class:`imgproxy.errors.ApiError` here (before any byte of a
response was sent), or into :class:`ImageDataError` (after), so the routes never see
a foreign exception type.
"""

from __future__ import annotations

from backends import BackendError, BackendFull, BackendUnavailable

from ..errors import ApiError, BadGateway, PayloadTooLarge, ServiceUnavailable

__all__ = ["ImageDataError", "store_error", "data_error"]


class ImageDataError(Exception):
    """An image's bytes could not be delivered (or proved wrong) while streaming them.

    After the response began, it must be cut: the client then sees an error, never a
    clean short or unverified body. ``image_id`` and ``offset`` say where (for the log);
    ``corrupt`` is true when the bytes were read but are not the image's.
    """

    def __init__(self, message: str, *, image_id: str, offset: int | None = None, corrupt: bool = False) -> None:
        super().__init__(message)
        self.image_id = image_id
        self.offset = offset
        self.corrupt = corrupt


def store_error(exc: BackendError, action: str) -> ApiError:
    """A store failed before any byte was sent. A full store is 413, as Glance answers
    ("Image storage media is full"); the message names the store's error, never a path."""
    if isinstance(exc, BackendFull):
        return PayloadTooLarge(f"Image storage media is full; could not {action}: {exc}",
                               headers={"Connection": "close"})
    if isinstance(exc, BackendUnavailable):
        return ServiceUnavailable(f"The image store is unavailable; could not {action}: {exc}")
    return ApiError(f"The image store failed; could not {action}: {exc}")


def data_error(exc: ImageDataError) -> ApiError:
    """The data stream failed before its first byte: an HTTP error instead of a cut."""
    if exc.corrupt:
        return BadGateway(f"The image store returned data that does not match the image: {exc}")
    return ServiceUnavailable(f"The image data could not be read from its store: {exc}")
