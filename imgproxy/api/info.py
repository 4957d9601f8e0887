"""Descriptive documents: ``/v2/info/import``, ``/v2/info/stores`` and ``/v2/schemas/...``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .. import schemas
from .common import caller, json_response, service_of
from .tasks import task_schema, tasks_schema

__all__ = ["routes"]


async def import_info(request: Request) -> Response:
    """The import methods this service offers (setting ``enabled_import_methods``)."""
    return json_response(
        {
            "import-methods": {
                "description": "Import methods available.",
                "type": "array",
                "value": list(service_of(request).settings.enabled_import_methods),
            }
        }
    )


async def stores_info(request: Request) -> Response:
    return json_response({"stores": service_of(request).images.stores.info()})


async def stores_detail(request: Request) -> Response:
    return json_response({"stores": service_of(request).images.stores.detail(caller(request))})


def _schema_route(path: str, build: Callable[[], dict[str, Any]]) -> Route:
    async def endpoint(request: Request) -> Response:
        return json_response(build())

    return Route(path, endpoint, methods=["GET"])


routes: list[BaseRoute] = [
    Route("/v2/info/import", import_info, methods=["GET"]),
    Route("/v2/info/stores", stores_info, methods=["GET"]),
    Route("/v2/info/stores/detail", stores_detail, methods=["GET"]),
    _schema_route("/v2/schemas/image", schemas.image_schema),
    _schema_route("/v2/schemas/images", schemas.images_schema),
    _schema_route("/v2/schemas/member", schemas.member_schema),
    _schema_route("/v2/schemas/members", schemas.members_schema),
    _schema_route("/v2/schemas/task", task_schema),
    _schema_route("/v2/schemas/tasks", tasks_schema),
]
