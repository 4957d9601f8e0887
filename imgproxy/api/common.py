"""Helpers every metadata handler uses: the caller, the service, path ids, JSON bodies."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..attrs import is_uuid
from ..context import RequestContext
from ..errors import BadRequest, NotFound, PayloadTooLarge
from ..service import Service

__all__ = ["caller", "service_of", "path_image_id", "read_json", "json_response"]


def caller(request: Request) -> RequestContext:
    ctx: RequestContext = request.state.context
    return ctx


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def path_image_id(request: Request) -> str:
    """The ``{image_id}`` of the path; 404 when it is not a UUID (as Glance answers)."""
    image_id = str(request.path_params["image_id"])
    if not is_uuid(image_id):
        raise NotFound(f"No image found with ID {image_id}")
    return image_id.lower()


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON: 413 over ``limit`` bytes (checked before and while reading),
    400 when empty or malformed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    if not body.strip():
        raise BadRequest("Body expected in request.")
    try:
        doc = json.loads(body)
        # JSON may escape lone surrogates ("\ud800"), which no UTF-8 text can hold:
        # refuse them here rather than fail when the record is stored.
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError):
        raise BadRequest("Malformed JSON in request body.") from None
    return doc


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(content, status_code=status_code, headers=headers)
