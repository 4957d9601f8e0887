"""The JSON body of a request, handed to the image service unread."""

from __future__ import annotations

from starlette.requests import Request

from ..images import BodyReader
from .common import read_json, service_of

__all__ = ["json_body"]


def json_body(request: Request) -> BodyReader:
    """Reads the body (``max_json_body`` at most) when the service asks for it: after it
    has found the image and authorized the caller, so their errors come first."""
    return lambda: read_json(request, service_of(request).settings.max_json_body)
