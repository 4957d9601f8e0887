"""Image metadata routes: create, list, show, update (JSON patch), delete, (de|re)activate, tags.

Each handler parses the request, calls one method of the image service
(:mod:`imgproxy.images`) and renders with :mod:`imgproxy.views`. Upload/download
(``/file``) live in :mod:`imgproxy.api.data`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlencode

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..context import RequestContext
from ..errors import UnsupportedMediaType
from ..listing_query import parse_query
from ..patch import PATCH_TYPES
from ..views import image_view, images_page_json
from .bodies import json_body
from .common import caller, json_response, path_image_id, service_of

if TYPE_CHECKING:
    from ..service import Service

__all__ = ["list_page", "routes"]


async def create_image(request: Request) -> Response:
    service = service_of(request)
    record = await service.images.records.create(caller(request), json_body(request))
    headers = {"Location": f"/v2/images/{record['id']}",
               "OpenStack-image-store-ids": ",".join(service.images.stores.ids())}
    methods = service.settings.enabled_import_methods
    if methods:  # Glance sends it only when import is on (no empty header fields)
        headers["OpenStack-image-import-methods"] = ",".join(methods)
    return json_response(image_view(record), 201, headers)


def _page_link(params: list[tuple[str, str]], marker: str | None) -> str:
    # Every filter is kept, repeated ones included (Glance's next link drops repeats).
    kept = [(k, v) for k, v in params if k != "marker"]
    if marker is not None:
        kept.append(("marker", marker))
    return "/v2/images" + (f"?{urlencode(kept)}" if kept else "")


async def list_page(service: Service, ctx: RequestContext, query_string: bytes) -> bytes:
    """The body of ``GET /v2/images?<query_string>`` for ``ctx``."""
    params = QueryParams(query_string).multi_items()
    page = await service.images.records.list(ctx, parse_query(params))
    next_link = None if page.next_marker is None else _page_link(params, page.next_marker)
    return images_page_json(page.views, _page_link(params, None), next_link)


async def index_images(request: Request) -> Response:
    # GET is answered before the router (imgproxy.app.ApiMiddleware), alike; HEAD comes here.
    body = await list_page(service_of(request), caller(request), request.scope["query_string"])
    return Response(body, media_type="application/json")


async def show_image(request: Request) -> Response:
    # GET is answered before the router (imgproxy.app.ApiMiddleware._show), alike; HEAD comes here.
    view = await service_of(request).images.records.show(caller(request), path_image_id(request))
    return Response(view, media_type="application/json")


async def update_image(request: Request) -> Response:
    image_id = path_image_id(request)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in PATCH_TYPES:
        raise UnsupportedMediaType(
            f"Unsupported Content-Type {media_type or '(none)'}; use one of {', '.join(PATCH_TYPES)}.",
            headers={"Accept-Patch": ", ".join(PATCH_TYPES)},
        )
    records = service_of(request).images.records
    updated = await records.update(caller(request), image_id, json_body(request), media_type)
    return json_response(image_view(updated))


async def delete_image(request: Request) -> Response:
    await service_of(request).images.deletes.delete(caller(request), path_image_id(request))
    return Response(status_code=204)


async def deactivate_image(request: Request) -> Response:
    await service_of(request).images.records.set_active(caller(request), path_image_id(request), False)
    return Response(status_code=204)


async def reactivate_image(request: Request) -> Response:
    await service_of(request).images.records.set_active(caller(request), path_image_id(request), True)
    return Response(status_code=204)


async def add_tag(request: Request) -> Response:
    tag = str(request.path_params["tag"])
    await service_of(request).images.records.add_tag(caller(request), path_image_id(request), tag)
    return Response(status_code=204)


async def delete_tag(request: Request) -> Response:
    tag = str(request.path_params["tag"])
    await service_of(request).images.records.remove_tag(caller(request), path_image_id(request), tag)
    return Response(status_code=204)


routes: list[BaseRoute] = [
    Route("/v2/images", index_images, methods=["GET"]),
    Route("/v2/images", create_image, methods=["POST"]),
    Route("/v2/images/{image_id}", show_image, methods=["GET"]),
    Route("/v2/images/{image_id}", update_image, methods=["PATCH"]),
    Route("/v2/images/{image_id}", delete_image, methods=["DELETE"]),
    Route("/v2/images/{image_id}/actions/deactivate", deactivate_image, methods=["POST"]),
    Route("/v2/images/{image_id}/actions/reactivate", reactivate_image, methods=["POST"]),
    Route("/v2/images/{image_id}/tags/{tag}", add_tag, methods=["PUT"]),
    Route("/v2/images/{image_id}/tags/{tag}", delete_tag, methods=["DELETE"]),
]
