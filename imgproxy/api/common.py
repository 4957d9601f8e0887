"""Helpers every metadata handler uses: the caller, the service, path ids, JSON bodies."""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..attrs import is_uuid
from ..context import RequestContext
from ..errors import BadRequest, NotFound, PayloadTooLarge
from ..service import Service

__all__ = ["caller", "service_of", "path_image_id", "read_json", "json_response", "MAX_JSON_DEPTH"]

# Nesting allowed in a JSON body. The API's deepest document is a patch whose value is a tag
# list (3 levels); deeper ones are refused before anything recurses over them (json.dumps,
# repr in an error message), which past ~1000 levels fails with RecursionError.
MAX_JSON_DEPTH = 32
_DIGITS = re.compile(r"[0-9]{1,18}", re.ASCII)


def caller(request: Request) -> RequestContext:
    ctx: RequestContext = request.state.context
    return ctx


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def path_image_id(request: Request) -> str:
    """The ``{image_id}`` of the path, lowercased; 404 unless it is a UUID in its canonical
    8-4-4-4-12 spelling (as Glance answers for what is not an image id)."""
    image_id = str(request.path_params["image_id"])
    if not is_uuid(image_id):
        raise NotFound(f"No image found with ID {image_id[:64]!r}")
    return image_id.lower()


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON: 413 over ``limit`` bytes (checked before and while reading),
    400 when empty, malformed or nested deeper than :data:`MAX_JSON_DEPTH`."""
    declared = request.headers.get("content-length")
    if declared is not None and (_DIGITS.fullmatch(declared) is None or int(declared) > limit):
        # The HTTP parser has checked the syntax; a number of 19+ digits is over any limit.
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
    except RecursionError:
        raise BadRequest(f"The JSON body is nested deeper than {MAX_JSON_DEPTH} levels.") from None
    except (ValueError, UnicodeError):
        raise BadRequest("Malformed JSON in request body.") from None
    if _depth_over(doc, MAX_JSON_DEPTH):
        raise BadRequest(f"The JSON body is nested deeper than {MAX_JSON_DEPTH} levels.")
    try:
        # JSON may escape lone surrogates ("\ud800"), which no UTF-8 text can hold:
        # refuse them here rather than fail when the record is stored.
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeError:
        raise BadRequest("Malformed JSON in request body.") from None
    return doc


def _depth_over(doc: Any, limit: int) -> bool:
    """Whether ``doc`` nests arrays/objects more than ``limit`` deep (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (list, dict)):
            if depth > limit:
                return True
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children if isinstance(child, (list, dict)))
    return False


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(content, status_code=status_code, headers=headers)
