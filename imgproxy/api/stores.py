"""Glance's stores API: ``DELETE /v2/stores/{store_id}/{image_id}`` deletes one store's copy
of an image (Image API v2.10); the workflow is :meth:`imgproxy.images.Deletes.delete_copy`.
The stores' discovery documents are in :mod:`imgproxy.api.info`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .common import caller, path_image_id, service_of

__all__ = ["routes"]


async def delete_from_store(request: Request) -> Response:
    """204; the copy's location goes at once, its data through the reaper."""
    store = str(request.path_params["store_id"])
    await service_of(request).images.deletes.delete_copy(caller(request), store, path_image_id(request))
    return Response(status_code=204)


routes: list[BaseRoute] = [
    Route("/v2/stores/{store_id}/{image_id}", delete_from_store, methods=["DELETE"]),
]
