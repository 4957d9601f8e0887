"""``create_edge_app(settings)``: the app of an edge (``upstream_api`` set).

The edge answers three kinds of requests itself: version discovery and health, image
data reads (``GET``/``HEAD /v2/images/{id}/file``, from its cache, authorized upstream) and
its own cache API (``/v2/cache``, with the edge's own tokens). Every other request is
the upstream's, streamed through (:mod:`.proxy`), whatever its method or path.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from ..api import versions
from ..app import MAX_HEADER_LINE, MAX_HEADERS_TOTAL, ApiMiddleware, _PUBLIC_PATHS, _api_error, _headers_too_large, \
    _http_error, _unexpected_error
from ..errors import ApiError, error_response
from ..ops.access import AccessMiddleware
from ..ops.access import strip_minor_version as _strip_minor_version
from ..ops.routes import ops_routes
from ..settings import Settings
from ..zerocopy import open_sendfile_threads
from . import cache_routes, data
from .service import EdgeService, open_edge_service

__all__ = ["create_edge_app"]

_DATA_PATH = re.compile(r"/v2/images/[^/]+/file")


def _own_api(path: str) -> bool:
    return path in _PUBLIC_PATHS or path == "/v2/cache" or path.startswith("/v2/cache/")


class EdgeMiddleware:
    """Sends each request where it belongs: the edge's own API (authenticated with the edge's
    tokens, as the service authenticates), its data route (authorized upstream), or the proxy."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.own = ApiMiddleware(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _strip_minor_version(scope["path"])
        if _own_api(path):
            await self.own(scope, receive, send)
            return
        if _headers_too_large(scope):
            message = f"Request headers are too large (at most {MAX_HEADER_LINE} bytes a line, {MAX_HEADERS_TOTAL} in all)."
            await error_response(431, "Request Header Fields Too Large", message, {"Connection": "close"})(
                scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD") and _DATA_PATH.fullmatch(path):
            await self.app(dict(scope, path=path, raw_path=path.encode()), receive, send)
            return
        service: EdgeService = scope["app"].state.service
        await service.proxy(scope, receive, send)


def create_edge_app(settings: Settings) -> Starlette:
    """Build the edge's app. Nothing is opened until the lifespan starts."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        service = await open_edge_service(settings)
        app.state.service = service
        try:
            async with open_sendfile_threads(settings.sendfile_threads) as sendfile:
                yield sendfile
        finally:
            await service.aclose()

    app = Starlette(
        routes=[*versions.routes, *data.routes, *cache_routes.routes, *ops_routes(settings)],
        lifespan=lifespan,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _unexpected_error},
    )
    app.add_middleware(EdgeMiddleware)
    app.add_middleware(AccessMiddleware, edge=True)
    return app
