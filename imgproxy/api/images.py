"""Image metadata: create, list, show, update (JSON patch), delete, (de|re)activate, tags.

Handlers are thin: parse and check the request, call the registry (writes in a worker
thread, one transaction each), render with :mod:`imgproxy.views`. Upload/download
(``/file``) live in :mod:`imgproxy.api.data`.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any
from urllib.parse import urlencode

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from backends import BackendError, BackendNotFound, WriteBackend

from .. import policy
from ..attrs import MAX_PROPERTIES, check_settable, check_tags, check_value, count_extra
from ..context import RequestContext
from ..errors import BadRequest, Forbidden, NotFound, PayloadTooLarge, UnsupportedMediaType
from ..listing import list_images, parse_query
from ..patch import PATCH_TYPES, apply_patch, parse_patch
from ..registry import utc_now
from ..service import Service
from ..views import image_view
from .common import caller, json_response, path_image_id, read_json, service_of

__all__ = ["routes", "new_record"]

log = logging.getLogger("imgproxy")


def new_record(ctx: RequestContext, body: Any) -> dict[str, Any]:
    """A queued image record from a create request body (400/403/413 on bad input)."""
    if not isinstance(body, dict):
        # Glance answers a JSON array (or any non-object) with 500; this is a client error.
        raise BadRequest("The request body must be a JSON object.")
    iso, us = utc_now()
    record: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "name": None,
        "status": "queued",
        "visibility": "shared",
        "protected": False,
        "os_hidden": False,
        "owner": ctx.project_id,
        "disk_format": None,
        "container_format": None,
        "min_disk": 0,
        "min_ram": 0,
        "size": None,
        "virtual_size": None,
        "checksum": None,
        "os_hash_algo": None,
        "os_hash_value": None,
        "created_at": iso,
        "updated_at": iso,
        "tags": [],
        "_created_us": us,
        "_locations": [],
    }
    for key, value in body.items():
        check_settable(ctx, key)
        record[key] = check_value(ctx, key, value)
    if count_extra(record) > MAX_PROPERTIES:
        raise PayloadTooLarge(f"Maximum number of image properties exceeded ({MAX_PROPERTIES}).")
    return record


async def create_image(request: Request) -> Response:
    ctx, service = caller(request), service_of(request)
    policy.check_write_role(ctx)
    body = await read_json(request, service.settings.max_json_body)
    record = new_record(ctx, body)
    await run_in_threadpool(service.registry.create, record)
    return json_response(image_view(record), 201, {"Location": f"/v2/images/{record['id']}"})


def _page_link(params: list[tuple[str, str]], marker: str | None) -> str:
    # Every filter is kept, repeated ones included (Glance's next link drops repeats).
    kept = [(k, v) for k, v in params if k != "marker"]
    if marker is not None:
        kept.append(("marker", marker))
    return "/v2/images" + (f"?{urlencode(kept)}" if kept else "")


async def index_images(request: Request) -> Response:
    ctx, service = caller(request), service_of(request)
    params = list(request.query_params.multi_items())
    query = parse_query(params)
    page, next_marker = list_images(service.registry, ctx, query)
    body: dict[str, Any] = {
        "images": [image_view(r) for r in page],
        "schema": "/v2/schemas/images",
        "first": _page_link(params, None),
    }
    if next_marker is not None:
        body["next"] = _page_link(params, next_marker)
    return json_response(body)


async def show_image(request: Request) -> Response:
    ctx, service = caller(request), service_of(request)
    return json_response(image_view(service.registry.get_visible(ctx, path_image_id(request))))


async def update_image(request: Request) -> Response:
    ctx, service = caller(request), service_of(request)
    image_id = path_image_id(request)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in PATCH_TYPES:
        raise UnsupportedMediaType(
            f"Unsupported Content-Type {media_type or '(none)'}; use one of {', '.join(PATCH_TYPES)}.",
            headers={"Accept-Patch": ", ".join(PATCH_TYPES)},
        )
    # Visibility first: another project's private image is 404 whatever the body says.
    record = service.registry.get_visible(ctx, image_id)
    policy.check_write_role(ctx)
    policy.check_modify(ctx, record)
    changes = parse_patch(ctx, await read_json(request, service.settings.max_json_body), media_type)
    updated = await run_in_threadpool(
        service.registry.update, image_id, lambda r: apply_patch(r, changes, media_type), ctx=ctx
    )
    return json_response(image_view(updated))


async def _delete_data(service: Service, image_id: str, locations: list[dict[str, Any]]) -> None:
    """Remove a deleted image's bytes from the writable stores that hold them."""
    for location in locations:
        url = location.get("url", "")
        try:
            backend = service.backends.for_location(url)
            if isinstance(backend, WriteBackend):
                await backend.delete(url)
        except BackendNotFound:
            pass
        except BackendError as exc:
            # The bytes stay behind; the reaper retries from the tombstone.
            log.warning("could not delete data of image %s at %s: %s", image_id, url, exc)


async def delete_image(request: Request) -> Response:
    ctx, service = caller(request), service_of(request)
    image_id = path_image_id(request)
    service.registry.get_visible(ctx, image_id)
    policy.check_write_role(ctx)
    old = await run_in_threadpool(lambda: service.registry.delete(image_id, ctx=ctx))
    await run_in_threadpool(service.cache.forget_image, image_id)
    task = BackgroundTask(_delete_data, service, image_id, list(old.get("_locations") or []))
    return Response(status_code=204, background=task)


async def _action(request: Request, target: str) -> Response:
    ctx, service = caller(request), service_of(request)
    image_id = path_image_id(request)
    record = service.registry.get_visible(ctx, image_id)
    policy.check_write_role(ctx)
    policy.check_modify(ctx, record)

    def change(r: dict[str, Any]) -> dict[str, Any]:
        # Glance: repeating the action is a no-op; any other state is 403.
        if r["status"] == target:
            return r
        source = "active" if target == "deactivated" else "deactivated"
        if r["status"] != source:
            verb = "deactivate" if target == "deactivated" else "reactivate"
            raise Forbidden(f"Not allowed to {verb} image in status '{r['status']}'")
        r["status"] = target
        return r

    await run_in_threadpool(lambda: service.registry.update(image_id, change, ctx=ctx))
    return Response(status_code=204)


async def deactivate_image(request: Request) -> Response:
    return await _action(request, "deactivated")


async def reactivate_image(request: Request) -> Response:
    return await _action(request, "active")


async def _tag_change(request: Request, add: bool) -> Response:
    ctx, service = caller(request), service_of(request)
    image_id = path_image_id(request)
    tag = str(request.path_params["tag"])
    record = service.registry.get_visible(ctx, image_id)
    policy.check_write_role(ctx)
    policy.check_modify(ctx, record)
    if add:
        check_tags([tag])

    def change(r: dict[str, Any]) -> dict[str, Any]:
        tags = list(r.get("tags") or [])
        if add:
            if tag not in tags:
                r["tags"] = check_tags([*tags, tag])
        else:
            if tag not in tags:
                raise NotFound(f"Tag {tag} not found on image {image_id}.")
            r["tags"] = [t for t in tags if t != tag]
        return r

    await run_in_threadpool(lambda: service.registry.update(image_id, change, ctx=ctx))
    return Response(status_code=204)


async def add_tag(request: Request) -> Response:
    return await _tag_change(request, add=True)


async def delete_tag(request: Request) -> Response:
    return await _tag_change(request, add=False)


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
