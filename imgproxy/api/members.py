"""Image members: sharing a ``visibility: shared`` image with other projects.

Glance's rules: only shared images have members (403 otherwise); the owner (or an admin)
adds and removes members; only the member itself accepts, rejects or resets its
membership; a member sees only its own membership, the owner sees all.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .. import policy
from ..context import RequestContext
from ..errors import BadRequest, Forbidden, NotFound, PayloadTooLarge
from ..registry import MEMBER_STATUSES
from ..views import member_view
from .common import caller, json_response, path_image_id, read_json, service_of

__all__ = ["routes"]

MAX_MEMBERS = 128  # Glance's image_member_quota default


def _shared_only(record: dict[str, Any]) -> None:
    if record.get("visibility") != "shared":
        raise Forbidden("Only shared images have members.")


def _owner_check(ctx: RequestContext) -> Any:
    def check(record: dict[str, Any]) -> None:
        _shared_only(record)
        policy.check_write_role(ctx)
        if not policy.may_modify(ctx, record):
            raise Forbidden("Only the image owner may change its members.")

    return check


def _may_see_all(ctx: RequestContext, record: dict[str, Any]) -> bool:
    return ctx.is_admin or policy.is_owner(ctx, record)


async def create_member(request: Request) -> Response:
    ctx, service = caller(request), service_of(request)
    image_id = path_image_id(request)
    record = service.registry.get_visible(ctx, image_id)
    _owner_check(ctx)(record)
    body = await read_json(request, service.settings.max_json_body)
    member = body.get("member") if isinstance(body, dict) else None
    if not isinstance(member, str) or not member.strip() or len(member) > 255:
        raise BadRequest('The request body must be {"member": "<project id>"}.')
    if len(service.registry.list_members(image_id)) >= MAX_MEMBERS:
        raise PayloadTooLarge(f"Maximum number of image members exceeded ({MAX_MEMBERS}).")
    row = await run_in_threadpool(lambda: service.registry.add_member(image_id, member, check=_owner_check(ctx)))
    return json_response(member_view(row))


async def index_members(request: Request) -> Response:
    ctx, service = caller(request), service_of(request)
    image_id = path_image_id(request)
    record = service.registry.get_visible(ctx, image_id)
    _shared_only(record)
    rows = service.registry.list_members(image_id)
    if not _may_see_all(ctx, record):
        rows = [r for r in rows if r["member_id"] == ctx.project_id]
    return json_response({"members": [member_view(r) for r in rows], "schema": "/v2/schemas/members"})


def _visible_member(request: Request) -> tuple[RequestContext, dict[str, Any], str]:
    ctx, service = caller(request), service_of(request)
    image_id = path_image_id(request)
    record = service.registry.get_visible(ctx, image_id)
    _shared_only(record)
    member = str(request.path_params["member_id"])
    if not _may_see_all(ctx, record) and member != ctx.project_id:
        raise NotFound(f"{member} is not a member of image {image_id}")
    return ctx, record, member


async def show_member(request: Request) -> Response:
    _, record, member = _visible_member(request)
    row = service_of(request).registry.get_member(record["id"], member)
    if row is None:
        raise NotFound(f"{member} is not a member of image {record['id']}")
    return json_response(member_view(row))


async def update_member(request: Request) -> Response:
    ctx, record, member = _visible_member(request)
    service = service_of(request)
    if member != ctx.project_id:
        raise Forbidden("Only the member itself may change its membership status.")
    policy.check_write_role(ctx)
    body = await read_json(request, service.settings.max_json_body)
    status = body.get("status") if isinstance(body, dict) else None
    if status not in MEMBER_STATUSES:
        raise BadRequest(f"Invalid status {status!r}: must be one of {', '.join(MEMBER_STATUSES)}.")
    row = await run_in_threadpool(service.registry.set_member_status, record["id"], member, status)
    return json_response(member_view(row))


async def delete_member(request: Request) -> Response:
    ctx, record, member = _visible_member(request)
    service = service_of(request)
    await run_in_threadpool(lambda: service.registry.remove_member(record["id"], member, check=_owner_check(ctx)))
    return Response(status_code=204)


routes: list[BaseRoute] = [
    Route("/v2/images/{image_id}/members", index_members, methods=["GET"]),
    Route("/v2/images/{image_id}/members", create_member, methods=["POST"]),
    Route("/v2/images/{image_id}/members/{member_id}", show_member, methods=["GET"]),
    Route("/v2/images/{image_id}/members/{member_id}", update_member, methods=["PUT"]),
    Route("/v2/images/{image_id}/members/{member_id}", delete_member, methods=["DELETE"]),
]
