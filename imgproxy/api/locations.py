"""Glance's locations API (Image API v2.17+): ``POST``/``GET /v2/images/{image_id}/locations``.

``POST`` answers 202 at once; the workflow is :mod:`imgproxy.images.locations`. Both
calls are for admins and services. Locations stay hidden from the image JSON (Glance's default
``show_multiple_locations = False``).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .bodies import json_body
from .common import caller, json_response, path_image_id, service_of

__all__ = ["routes"]


async def add_location(request: Request) -> Response:
    """``POST /v2/images/{image_id}/locations``: 202, the image goes active (validated) or saving."""
    locations = service_of(request).images.locations
    await locations.add(caller(request), path_image_id(request), json_body(request))
    return Response(status_code=202)


async def get_locations(request: Request) -> Response:
    """``GET /v2/images/{image_id}/locations``: 200 ``[{"url", "metadata"}]``, admins and services."""
    return json_response(await service_of(request).images.locations.list(caller(request), path_image_id(request)))


routes: list[BaseRoute] = [
    Route("/v2/images/{image_id}/locations", add_location, methods=["POST"]),
    Route("/v2/images/{image_id}/locations", get_locations, methods=["GET"]),
]
