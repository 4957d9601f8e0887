"""Image member routes: sharing a ``visibility: shared`` image with other projects.

The rules (Glance's) live in :mod:`imgproxy.images.members`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..views import member_view
from .bodies import json_body
from .common import caller, json_response, path_image_id, service_of

__all__ = ["routes"]


async def create_member(request: Request) -> Response:
    members = service_of(request).images.members
    row = await members.add(caller(request), path_image_id(request), json_body(request))
    return json_response(member_view(row))


async def index_members(request: Request) -> Response:
    rows = await service_of(request).images.members.list(caller(request), path_image_id(request))
    return json_response({"members": [member_view(r) for r in rows], "schema": "/v2/schemas/members"})


async def show_member(request: Request) -> Response:
    member = str(request.path_params["member_id"])
    row = await service_of(request).images.members.show(caller(request), path_image_id(request), member)
    return json_response(member_view(row))


async def update_member(request: Request) -> Response:
    member = str(request.path_params["member_id"])
    members = service_of(request).images.members
    row = await members.set_status(caller(request), path_image_id(request), member, json_body(request))
    return json_response(member_view(row))


async def delete_member(request: Request) -> Response:
    member = str(request.path_params["member_id"])
    await service_of(request).images.members.remove(caller(request), path_image_id(request), member)
    return Response(status_code=204)


routes: list[BaseRoute] = [
    Route("/v2/images/{image_id}/members", index_members, methods=["GET"]),
    Route("/v2/images/{image_id}/members", create_member, methods=["POST"]),
    Route("/v2/images/{image_id}/members/{member_id}", show_member, methods=["GET"]),
    Route("/v2/images/{image_id}/members/{member_id}", update_member, methods=["PUT"]),
    Route("/v2/images/{image_id}/members/{member_id}", delete_member, methods=["DELETE"]),
]
