"""The tasks API (``POST /v2/tasks``, ``GET /v2/tasks``, ``GET /v2/tasks/{id}``; admins only, as in
Glance) and its schemas (served under ``/v2/schemas`` by :mod:`imgproxy.api.info`). Creating a task
is Glance's legacy ``import`` (:mod:`imgproxy.images.legacy_tasks`)."""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..errors import BadRequest
from ..tasks import TASK_STATUSES, task_stub, task_view
from .bodies import json_body
from .common import caller, json_response, service_of

__all__ = ["routes", "task_schema", "tasks_schema"]

_UUID = "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"
_TASK_PROPERTIES: dict[str, Any] = {
    "id": {"description": "An identifier for the task", "pattern": _UUID, "type": "string"},
    "type": {"description": "The type of task represented by this content",
             "enum": ["import", "api_image_import", "location_import"], "type": "string"},
    "status": {"description": "The current status of this task", "enum": list(TASK_STATUSES), "type": "string"},
    "input": {"description": "The parameters required by task, JSON blob", "type": ["null", "object"]},
    "result": {"description": "The result of current task, JSON blob", "type": ["null", "object"]},
    "owner": {"description": "An identifier for the owner of this task", "type": "string"},
    "message": {"description": "Human-readable informative message only included when appropriate "
                               "(usually on failure)", "type": "string"},
    "image_id": {"description": "Image associated with the task", "type": "string"},
    "request_id": {"description": "Human-readable informative request-id", "type": "string"},
    "user_id": {"description": "User associated with the task", "type": "string"},
    "expires_at": {"description": "Datetime when this resource would be subject to removal",
                   "type": ["null", "string"]},
    "created_at": {"description": "Datetime when this resource was created", "type": "string"},
    "updated_at": {"description": "Datetime when this resource was updated", "type": "string"},
    "self": {"readOnly": True, "type": "string"},
    "schema": {"readOnly": True, "type": "string"},
}
_SORT_KEYS = ("created_at", "updated_at", "id", "type", "status", "owner")
DEFAULT_LIMIT, MAX_LIMIT = 25, 1000


def task_schema() -> dict[str, Any]:
    return {"name": "task", "properties": copy.deepcopy(_TASK_PROPERTIES)}


def tasks_schema() -> dict[str, Any]:
    partial = {k: v for k, v in copy.deepcopy(_TASK_PROPERTIES).items() if k not in ("input", "result", "message")}
    return {"name": "tasks",
            "properties": {"tasks": {"type": "array", "items": {"name": "task", "properties": partial}},
                           "schema": {"type": "string"}},
            "links": [{"rel": "describedby", "href": "{schema}"}]}


def _sort_value(task: dict[str, Any], key: str) -> Any:
    if key in ("created_at", "updated_at"):
        return (int(task[f"_{key.split('_')[0]}_us"]), task["id"])
    return (str(task.get(key) or ""), task["id"])


async def list_tasks(request: Request) -> Response:
    """``GET /v2/tasks``: filters ``status`` and ``type``, ``sort_key``/``sort_dir``, ``marker``, ``limit``."""
    params = dict(request.query_params)
    sort_key = params.get("sort_key", "created_at")
    sort_dir = params.get("sort_dir", "desc")
    if sort_dir not in ("asc", "desc"):
        raise BadRequest(f"Invalid sort direction: {sort_dir[:32]}")
    if sort_key not in _SORT_KEYS:
        raise BadRequest(f"Invalid sort key: {sort_key[:32]}")
    status, kind = params.get("status"), params.get("type")
    if status and status not in TASK_STATUSES:
        raise BadRequest(f"Invalid status value: {status[:32]}")
    if kind and kind not in ("import", "api_image_import", "location_import"):
        raise BadRequest(f"Invalid type value: {kind[:32]}")
    raw_limit = params.get("limit")
    try:
        limit = DEFAULT_LIMIT if raw_limit is None else int(raw_limit)
    except ValueError:
        raise BadRequest("limit param must be an integer") from None
    if limit < 0:
        raise BadRequest("limit param must be positive")
    limit = min(limit, MAX_LIMIT)
    tasks = await service_of(request).images.imports.list_tasks(caller(request))
    tasks = [t for t in tasks if (not status or t["status"] == status) and (not kind or t["type"] == kind)]
    tasks.sort(key=lambda t: _sort_value(t, sort_key), reverse=sort_dir == "desc")
    marker = params.get("marker")
    if marker is not None:
        ids = [t["id"] for t in tasks]
        if marker not in ids:
            raise BadRequest(f"Invalid marker {marker[:64]}: no such task")
        tasks = tasks[ids.index(marker) + 1:]
    page = tasks[:limit]
    rest = {k: v for k, v in params.items() if k != "marker"}
    body: dict[str, Any] = {"tasks": [task_stub(t) for t in page], "first": "/v2/tasks", "schema": "/v2/schemas/tasks"}
    if rest:
        body["first"] = f"/v2/tasks?{urlencode(rest)}"
    if page and len(page) == limit and len(tasks) > limit:
        body["next"] = "/v2/tasks?" + urlencode({**rest, "marker": page[-1]["id"]})
    return json_response(body)


async def show_task(request: Request) -> Response:
    task = await service_of(request).images.imports.get_task(caller(request), str(request.path_params["task_id"]))
    return json_response(task_view(task))


async def create_task(request: Request) -> Response:
    """``POST /v2/tasks``: 201 with the pending task and its ``Location``, as Glance answers."""
    task = await service_of(request).images.legacy_tasks.create(caller(request), json_body(request),
                                                                request.headers.get("x-auth-token"))
    return json_response(task_view(task), status_code=201, headers={"Location": f"/v2/tasks/{task['id']}"})


routes: list[BaseRoute] = [
    Route("/v2/tasks", create_task, methods=["POST"]),
    Route("/v2/tasks", list_tasks, methods=["GET"]),
    Route("/v2/tasks/{task_id}", show_task, methods=["GET"]),
]
