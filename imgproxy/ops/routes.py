"""The operator's routes: ``/metrics``, ``/healthcheck``, ``/healthcheck/ready``, ``/status``.

None of them takes the image API's tokens (they are public paths of the API middleware):
``/metrics`` and the health checks answer anyone who can reach them (bind ``/metrics``
elsewhere with ``metrics_listen``); ``/status`` checks its caller itself, because a browser
can only send a token in the URL: ``?token=`` or ``X-Auth-Token``, an admin's or the
``status_token``.
"""

from __future__ import annotations

import asyncio
import heapq
import hmac
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from ..errors import Forbidden, NotFound, Unauthorized
from ..settings import Settings
from .figures import cache_figures
from .health import healthcheck, readiness
from .history import fill_board, read_boards
from .metrics import CONTENT_TYPE, render
from .paths import run_dir
from .status_page import StatusView, render_status

__all__ = ["PUBLIC_PATHS", "ops_routes"]

PUBLIC_PATHS = frozenset({"/healthcheck", "/healthcheck/ready", "/metrics", "/status"})
MOST_READ = 10


async def metrics_endpoint(request: Request) -> Response:
    service = request.app.state.service
    if service.metrics is None:
        raise NotFound("Metrics are off (metrics = false).")
    figures = await asyncio.to_thread(cache_figures, service.cache, service.env)
    body = await asyncio.to_thread(render, service.metrics, figures)
    return Response(body, media_type=CONTENT_TYPE)


async def _authorize(request: Request, settings: Settings, auth: Any) -> None:
    """Admins and holders of ``status_token`` (header or ``?token=``); 401 or 403 otherwise."""
    token = request.headers.get("x-auth-token") or request.query_params.get("token") or ""
    if settings.status_token and token and hmac.compare_digest(token.encode(), settings.status_token.encode()):
        return
    headers = dict(request.headers)
    if token:
        headers["x-auth-token"] = token
    context = await auth.authenticate(headers)
    if context is None:
        raise Unauthorized("The status page needs an admin token or the status token (X-Auth-Token or ?token=).")
    if not context.is_admin:
        raise Forbidden("The status page is for administrators.")


def most_read(cache: Any, limit: int) -> list[dict[str, Any]]:
    """The ``limit`` images with the most reads: ``image_id``, ``hits``, ``last_accessed`` (epoch s).
    Walks the per-image cache records (one per image ever read): call it off the event loop."""
    index = cache.index
    rows = []
    with cache.env.begin() as txn:
        for key in txn.cursor(db=index.images_db).iternext(keys=True, values=False):
            image_id = bytes(key).decode()
            hits, access, _ = index.image_info(txn, image_id)
            if hits:
                rows.append({"image_id": image_id, "hits": hits, "last_accessed": access / 1e6})
    return heapq.nlargest(limit, rows, key=lambda row: (row["hits"], row["last_accessed"]))


def _names(service: Any, ids: set[str]) -> dict[str, str]:
    registry = getattr(service, "registry", None)  # an edge keeps no records
    names: dict[str, str] = {}
    if registry is None:
        return names
    for image_id in ids:
        record = registry.get(image_id)
        if record is not None and record.get("name"):
            names[image_id] = str(record["name"])
    return names


async def status_page(request: Request) -> Response:
    service = request.app.state.service
    await _authorize(request, service.settings, service.auth)
    figures = await asyncio.to_thread(cache_figures, service.cache, service.env)
    top = await asyncio.to_thread(most_read, service.cache, MOST_READ)
    queued = await asyncio.to_thread(service.cache.queue.items)
    fills = await asyncio.to_thread(read_boards, run_dir(service.settings.data_dir), fill_board(service.cache))
    ids = {row["image_id"] for row in top} | set(queued[:100]) | {f["image_id"] for f in fills}
    names = await asyncio.to_thread(_names, service, ids)
    title = "imgproxy edge" if service.settings.edge else "imgproxy"
    view = StatusView(figures, service.history.points(), fills, top, queued[:100], names, title)
    return HTMLResponse(render_status(view), headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


def ops_routes(settings: Settings) -> list[BaseRoute]:
    routes: list[BaseRoute] = [
        Route("/healthcheck", healthcheck, methods=["GET", "HEAD"]),
        Route("/healthcheck/ready", readiness, methods=["GET"]),
        Route("/status", status_page, methods=["GET"]),
    ]
    if settings.metrics and not settings.metrics_listen:
        routes.append(Route("/metrics", metrics_endpoint, methods=["GET"]))
    return routes
