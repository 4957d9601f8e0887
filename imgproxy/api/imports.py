"""Interoperable image import routes: ``PUT /stage``, ``POST /import``, ``GET /tasks`` of an image.

The workflows are :class:`imgproxy.images.Imports`'s; here the request's headers and bodies.
"""

from __future__ import annotations

import logging

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..errors import UnsupportedMediaType
from ..tasks import image_task_view
from .bodies import json_body
from .common import caller, json_response, path_image_id, service_of

__all__ = ["routes"]

log = logging.getLogger("imgproxy.imports")


async def stage(request: Request) -> Response:
    """``PUT /v2/images/{image_id}/stage``: 204 once the data is staged."""
    image_id = path_image_id(request)
    imports = service_of(request).images.imports
    if "glance-direct" in imports.methods:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/octet-stream":
            raise UnsupportedMediaType(f"Content-Type {media_type or '(none)'!r} is not supported for image data; "
                                       "use application/octet-stream.")
    try:
        await imports.stage(caller(request), image_id, request.stream())
    except ClientDisconnect:
        log.info("stage of %s abandoned by the client; image is queued again", image_id)
        return Response(status_code=400)
    return Response(status_code=204)


async def import_image(request: Request) -> Response:
    """``POST /v2/images/{image_id}/import``: 202, the import runs in the background."""
    imports = service_of(request).images.imports
    await imports.start(caller(request), path_image_id(request), json_body(request), request.headers,
                        request.headers.get("x-auth-token"))
    return Response(status_code=202)


async def image_tasks(request: Request) -> Response:
    """``GET /v2/images/{image_id}/tasks``: the image's import tasks, as Glance lists them."""
    tasks = await service_of(request).images.imports.image_tasks(caller(request), path_image_id(request))
    return json_response({"tasks": [image_task_view(t) for t in tasks]})


routes: list[BaseRoute] = [
    Route("/v2/images/{image_id}/stage", stage, methods=["PUT"]),
    Route("/v2/images/{image_id}/import", import_image, methods=["POST"]),
    Route("/v2/images/{image_id}/tasks", image_tasks, methods=["GET"]),
]
