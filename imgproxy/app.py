"""``create_app(settings)``: builds the ASGI app; the lifespan owns every resource."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from .api import cache_api, data, images, imports, info, locations, members, metadefs, stores, tasks, versions
from .api.common import json_response
from .api.versions import versions_document
from .errors import ApiError, Unauthorized, error_response
from .heads import MAX_HEADER_LINE as MAX_HEADER_LINE  # the edge app's too
from .heads import MAX_HEADERS_TOTAL as MAX_HEADERS_TOTAL
from .heads import headers_too_large
from .ops.access import AccessMiddleware, AccessRecorder
from .ops.access import strip_minor_version as _strip_minor_version
from .ops.routes import PUBLIC_PATHS, ops_routes
from .protocol import QUICK
from .service import Service, open_service
from .settings import Settings
from .shortcut import SHOW_ROUTE, ShowShortcut, shown_id
from .zerocopy import open_sendfile_threads

__all__ = ["create_app"]

log = logging.getLogger("imgproxy")

# Paths anyone may read without an image API token (version discovery, health, metrics; the
# status page checks its caller itself).
_PUBLIC_PATHS = frozenset({"/", "/versions"}) | PUBLIC_PATHS


def _headers_too_large(scope: Scope) -> bool:
    return headers_too_large(scope["headers"])


_VERSION_PREFIX = re.compile(r"^/v\d+(\.\d+)?(/|$)")


def _other_version(path: str) -> bool:
    """A ``/vN/...`` path of a version other than v2 (``/v1/images``, ``/v7``, ``/v3/x``)."""
    return bool(_VERSION_PREFIX.match(path)) and not (path == "/v2" or path.startswith("/v2/"))


_JSON_TYPE = (b"content-type", b"application/json")


class ApiMiddleware:
    """Normalizes the version prefix and authenticates the caller.

    Pure ASGI so that streaming responses pass through untouched. Image show and list, the
    calls compute nodes and dashboards make most, are answered here from the stored views,
    as their routes (``show_route``, ``list_route``) would answer them, without the router
    and Request/Response objects (a show, when the protocol has not answered it already:
    :mod:`imgproxy.shortcut`).
    """

    def __init__(self, app: ASGIApp, show_route: BaseRoute | None = None, list_route: BaseRoute | None = None) -> None:
        self.app = app
        self.show_route = show_route
        self.list_route = list_route

    async def _answer(self, scope: Scope, receive: Receive, send: Send, route: BaseRoute | None,
                      body: Coroutine[Any, Any, bytes]) -> None:
        """Send ``body``'s JSON as ``route`` would (an :class:`ApiError` it raises as the error
        answer), without the router and Request/Response objects."""
        scope["route"] = route  # what the access log and the metrics name
        try:
            view = await body
        except ApiError as exc:
            await error_response(exc.status, exc.title, exc.message, exc.headers)(scope, receive, send)
            return
        # The headers Starlette's Response(view, media_type="application/json") sends, in its order.
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(view)), _JSON_TYPE]})
        await send({"type": "http.response.body", "body": view})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _headers_too_large(scope):
            message = f"Request headers are too large (at most {MAX_HEADER_LINE} bytes a line, {MAX_HEADERS_TOTAL} in all)."
            await error_response(431, "Request Header Fields Too Large", message, {"Connection": "close"})(
                scope, receive, send
            )
            return
        path = _strip_minor_version(scope["path"])
        if path != scope["path"]:
            scope = dict(scope, path=path, raw_path=path.encode())
        if _other_version(path):
            # Glance's version negotiation: a version it does not serve gets the list (300).
            await json_response(versions_document(str(Request(scope).base_url)), 300)(scope, receive, send)
            return
        if path not in _PUBLIC_PATHS:
            service: Service = scope["app"].state.service
            try:
                context = await service.auth.authenticate(Headers(scope=scope))
            except ApiError as exc:
                await error_response(exc.status, exc.title, exc.message, exc.headers)(scope, receive, send)
                return
            if context is None:
                missing = Unauthorized("This request needs a valid X-Auth-Token.")
                headers = {"WWW-Authenticate": service.auth.challenge}
                await error_response(missing.status, missing.title, missing.message, headers)(scope, receive, send)
                return
            scope.setdefault("state", {})
            scope["state"]["context"] = context
            image_id = shown_id(scope["method"], path) if self.show_route is not None else None
            if image_id is not None:
                await self._answer(scope, receive, send, self.show_route,
                                   service.images.records.show(context, image_id))
                return
            if path == "/v2/images" and scope["method"] == "GET" and self.list_route is not None:
                await self._answer(scope, receive, send, self.list_route,
                                   images.list_page(service, context, scope["query_string"]))
                return
        await self.app(scope, receive, send)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.title, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    titles = {404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request"}
    title = titles.get(exc.status_code, "Error")
    message = exc.detail if isinstance(exc.detail, str) and exc.detail != title else f"{title}: {request.url.path}"
    return error_response(exc.status_code, title, message, exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, "Internal Server Error", "The server failed to handle this request.")


def create_app(settings: Settings) -> Starlette:
    """Build the app. Nothing is opened until the lifespan starts."""
    if settings.edge:
        from .edge import create_edge_app  # an edge keeps no records: a different app

        return create_edge_app(settings)

    recorder = AccessRecorder()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        service = await open_service(settings)
        app.state.service = service
        try:
            async with open_sendfile_threads(settings.sendfile_threads) as sendfile:
                # The protocol answers image shows it can with this (imgproxy.protocol's QUICK).
                yield {QUICK: ShowShortcut(service, recorder), **sendfile}
        finally:
            await service.aclose()

    routes = [
        *versions.routes,
        *images.routes,
        *members.routes,
        *data.routes,
        *locations.routes,
        *info.routes,
        *stores.routes,
        *imports.routes,
        *tasks.routes,
        *cache_api.routes,
        *metadefs.routes,
        *ops_routes(settings),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _unexpected_error},
    )
    # Glance answers /v2/images/ with 404, not a redirect to /v2/images.
    app.router.redirect_slashes = False
    def get_route(path: str) -> BaseRoute:
        return next(r for r in images.routes if getattr(r, "path", None) == path
                    and "GET" in (getattr(r, "methods", None) or ()))

    app.add_middleware(ApiMiddleware, show_route=get_route(SHOW_ROUTE), list_route=get_route("/v2/images"))
    # Outermost: ids, log lines and metrics for every answer (the recorder: the shortcut's too).
    app.add_middleware(AccessMiddleware, recorder=recorder)
    return app
