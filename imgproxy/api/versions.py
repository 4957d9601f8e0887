"""Version discovery (``GET /`` 300, ``GET /versions`` 200). Health: :mod:`imgproxy.ops.health`."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .common import json_response

__all__ = ["routes", "versions_document"]

# Newest first, as Glance lists them; every v2.N is served by the same /v2 API.
# v2.18 (cache clean/prune) is what Glance lists when its cache is enabled; ours always is.
_CURRENT = "v2.18"
_VERSIONS = ("v2.18", "v2.17", "v2.16", "v2.15", "v2.14", "v2.13", "v2.12", "v2.11", "v2.10", "v2.9", "v2.8",
             "v2.7", "v2.6", "v2.5", "v2.4", "v2.3", "v2.2", "v2.1", "v2.0")  # fmt: skip


def versions_document(base_url: str) -> dict[str, Any]:
    href = base_url.rstrip("/") + "/v2/"
    return {
        "versions": [
            {
                "id": version,
                "status": "CURRENT" if version == _CURRENT else "SUPPORTED",
                "links": [{"rel": "self", "href": href}],
            }
            for version in _VERSIONS
        ]
    }


async def root(request: Request) -> Response:
    return json_response(versions_document(str(request.base_url)), 300)


async def versions(request: Request) -> Response:
    return json_response(versions_document(str(request.base_url)))


routes: list[BaseRoute] = [
    Route("/", root, methods=["GET"]),
    Route("/versions", versions, methods=["GET"]),
]
