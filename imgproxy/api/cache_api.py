"""Glance's cache management API (``/v2/cache``, Image API v2.14 and v2.18) and cache stats.

Same paths, status codes and bodies as Glance 33 (``glance/api/v2/cached_images.py``),
so ``glance cache-list|cache-queue|cache-delete|cache-clear|cache-clean|cache-prune|
cache-nodes-list`` work unchanged. Every endpoint is for admins only (403 otherwise),
as Glance's default ``manage_image_cache`` policy is.

- ``GET /v2/cache`` 200: fully cached images and the prefetch queue.
- ``PUT /v2/cache/{id}`` 202: queue an active image and start the prefetcher now
  (404 unknown, 400 not active, as Glance answers).
- ``DELETE /v2/cache/{id}`` 204: evict the image's unshared chunks and dequeue it
  (404 when the image is unknown and neither cached nor queued).
- ``DELETE /v2/cache`` 204: ``x-image-cache-clear-target`` ``cache``, ``queue`` or
  empty/missing (both); anything else 400 (Glance refuses ``both`` too).
- ``POST /v2/cache/prune`` 200 ``{"total_files_pruned", "total_bytes_pruned"}``.
- ``POST /v2/cache/clean`` 200: Glance sends no body; we send what was cleaned
  (``total_files_cleaned`` and the details), which glanceclient ignores.
- ``GET /v2/cache/nodes/{id}`` 200: JSON list of node URLs holding the whole image:
  this node's base URL, or ``[]``.
- ``GET /v2/cache/stats`` 200: :meth:`cache.ImageCache.stats` plus the size limits
  (an imgproxy extension).
- ``GET /v2/cache/{id}`` 200: how much of one image is cached, and whether it is queued
  (an imgproxy extension; :func:`imgproxy.images.cache_admin.image_progress`).

The workflows are :mod:`imgproxy.images.cache_admin`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .common import caller, json_response, path_image_id, service_of

__all__ = ["Endpoint", "cache_routes", "routes"]

CLEAR_TARGET_HEADER = "x-image-cache-clear-target"

Endpoint = Callable[[Request], Awaitable[Response]]


async def get_cache_state(request: Request) -> Response:
    """``GET /v2/cache``: Glance lists fully cached images only, with these five fields."""
    cached, queued = await service_of(request).images.cache.state(caller(request))
    return json_response({"cached_images": cached, "queued_images": queued})


async def queue_image(request: Request) -> Response:
    """``PUT /v2/cache/{image_id}``: 202 queued; 404 unknown; 400 unless active."""
    await service_of(request).images.cache.queue(caller(request), path_image_id(request))
    return Response(status_code=202)


async def delete_cache_entry(request: Request) -> Response:
    """``DELETE /v2/cache/{image_id}``: 204; its unshared chunks go and it leaves the queue."""
    await service_of(request).images.cache.evict(caller(request), path_image_id(request))
    return Response(status_code=204)


async def clear_cache(request: Request) -> Response:
    """``DELETE /v2/cache``: 204; the header picks cache, queue or (empty/missing) both."""
    target = request.headers.get(CLEAR_TARGET_HEADER, "").strip().lower()
    await service_of(request).images.cache.clear(caller(request), target)
    return Response(status_code=204)


async def prune_cache(request: Request) -> Response:
    """``POST /v2/cache/prune``: evict LRU chunks if over the high watermark."""
    return json_response(await service_of(request).images.cache.prune(caller(request)))


async def clean_cache(request: Request) -> Response:
    """``POST /v2/cache/clean``: remove stale temp files and orphans, fix the index."""
    return json_response(await service_of(request).images.cache.clean(caller(request)))


async def get_cached_nodes(request: Request) -> Response:
    """``GET /v2/cache/nodes/{image_id}``: this node's URL if it holds the whole image."""
    whole = await service_of(request).images.cache.holds_whole(caller(request), path_image_id(request))
    return json_response([str(request.base_url)] if whole else [])


async def get_stats(request: Request) -> Response:
    """``GET /v2/cache/stats``: cache-wide counters (all processes) and the size limits."""
    return json_response(await service_of(request).images.cache.stats(caller(request)))


async def get_progress(request: Request) -> Response:
    """``GET /v2/cache/{image_id}``: ``cached_bytes`` of ``size``, ``complete``, ``queued``."""
    return json_response(await service_of(request).images.cache.progress(caller(request), path_image_id(request)))


def cache_routes(*, get_state: Endpoint, clear: Endpoint, stats: Endpoint, prune: Endpoint, clean: Endpoint,
                 nodes: Endpoint, progress: Endpoint, queue: Endpoint, delete: Endpoint) -> list[BaseRoute]:
    """The cache API's routes (Glance's paths and methods) over one set of handlers: the
    service's, or an edge's (:mod:`imgproxy.edge.cache_routes`)."""
    # Fixed paths come before /v2/cache/{image_id}, which would otherwise match them.
    return [
        Route("/v2/cache", get_state, methods=["GET"]),
        Route("/v2/cache", clear, methods=["DELETE"]),
        Route("/v2/cache/stats", stats, methods=["GET"]),
        Route("/v2/cache/prune", prune, methods=["POST"]),
        Route("/v2/cache/clean", clean, methods=["POST"]),
        Route("/v2/cache/nodes/{image_id}", nodes, methods=["GET"]),
        Route("/v2/cache/{image_id}", progress, methods=["GET"]),
        Route("/v2/cache/{image_id}", queue, methods=["PUT"]),
        Route("/v2/cache/{image_id}", delete, methods=["DELETE"]),
    ]


routes = cache_routes(get_state=get_cache_state, clear=clear_cache, stats=get_stats, prune=prune_cache,
                      clean=clean_cache, nodes=get_cached_nodes, progress=get_progress, queue=queue_image,
                      delete=delete_cache_entry)
