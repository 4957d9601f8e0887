"""The service's errors and their one mapping to HTTP.

Handlers raise :class:`ApiError` subclasses; :func:`error_response` turns any of them
into a JSON body ``{"error": {"code", "title", "message"}}`` with the matching status
(the shape Keystone and Glance's WSGI faults use: python-glanceclient reads the
``message`` of each top-level object, so the fields must be nested). Errors
from lower layers (backends, cache) are translated once, where the handler calls them.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse

__all__ = [
    "ApiError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "MethodNotAllowed",
    "NotAcceptable",
    "Conflict",
    "Gone",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "RangeNotSatisfiable",
    "ServiceUnavailable",
    "BadGateway",
    "error_response",
]


class ApiError(Exception):
    """An error a client should see; ``status`` is its HTTP status."""

    status = 500
    title = "Internal Server Error"

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


class BadRequest(ApiError):
    status, title = 400, "Bad Request"


class Unauthorized(ApiError):
    status, title = 401, "Unauthorized"


class Forbidden(ApiError):
    status, title = 403, "Forbidden"


class NotFound(ApiError):
    status, title = 404, "Not Found"


class MethodNotAllowed(ApiError):
    status, title = 405, "Method Not Allowed"


class NotAcceptable(ApiError):
    status, title = 406, "Not Acceptable"


class Conflict(ApiError):
    status, title = 409, "Conflict"


class Gone(ApiError):
    status, title = 410, "Gone"


class PayloadTooLarge(ApiError):
    status, title = 413, "Request Entity Too Large"


class UnsupportedMediaType(ApiError):
    status, title = 415, "Unsupported Media Type"


class RangeNotSatisfiable(ApiError):
    status, title = 416, "Requested Range Not Satisfiable"


class BadGateway(ApiError):
    status, title = 502, "Bad Gateway"


class ServiceUnavailable(ApiError):
    status, title = 503, "Service Unavailable"


def error_response(status: int, title: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": status, "title": title, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)
