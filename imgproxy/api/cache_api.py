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

The cache calls that walk manifests or write LMDB run in Starlette's thread pool so
a large cache never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..errors import BadRequest, Forbidden, NotFound
from ..service import Service
from ..sources import prefetch_queued
from .common import caller, json_response, path_image_id, service_of

__all__ = ["routes"]

log = logging.getLogger("imgproxy.cache_api")

CLEAR_TARGET_HEADER = "x-image-cache-clear-target"
_CLEAR_TARGETS = ("", "cache", "queue")


def _admin_service(request: Request) -> Service:
    """The service, once the caller is known to be an admin (403 otherwise)."""
    if not caller(request).is_admin:
        raise Forbidden("Managing the image cache is restricted to administrators.")
    return service_of(request)


def _kick_prefetcher(service: Service) -> None:
    """Run the prefetcher now instead of at its next interval.

    The run is a service task, so shutdown cancels it. Overlapping runs (this one, the
    loop's, another PUT's) are harmless: fills are single-flight, so an image being
    filled is read from upstream once.
    """

    async def run() -> None:
        try:
            result = await prefetch_queued(service)
            log.info("prefetch (on request): %s", result)
        except Exception:
            log.exception("prefetch (on request) failed; the loop retries")

    task = asyncio.get_running_loop().create_task(run(), name="imgproxy-prefetch-now")
    service.tasks.append(task)
    task.add_done_callback(lambda t: service.tasks.remove(t) if t in service.tasks else None)


def _complete_images(service: Service) -> list[dict[str, Any]]:
    return [row for row in service.cache.cached_images() if row["complete"]]


async def get_cache_state(request: Request) -> Response:
    """``GET /v2/cache``: Glance lists fully cached images only, with these five fields."""
    service = _admin_service(request)
    rows = await run_in_threadpool(_complete_images, service)
    cached = [
        {k: row[k] for k in ("image_id", "hits", "last_accessed", "last_modified", "size")} for row in rows
    ]
    queued = await run_in_threadpool(service.cache.queued)
    return json_response({"cached_images": cached, "queued_images": queued})


async def queue_image(request: Request) -> Response:
    """``PUT /v2/cache/{image_id}``: 202 queued; 404 unknown; 400 unless active."""
    service = _admin_service(request)
    image_id = path_image_id(request)
    record = service.registry.get_visible(caller(request), image_id)
    if record.get("status") != "active":
        raise BadRequest("Only images with status active can be targeted for queueing")
    await run_in_threadpool(service.cache.queue_prefetch, image_id)
    service.locations.full_read(image_id)  # the prefetch reads it all: verify it on the way
    _kick_prefetcher(service)
    return Response(status_code=202)


def _known_to_cache(service: Service, image_id: str) -> bool:
    if image_id in service.cache.queued():
        return True
    return any(row["image_id"] == image_id for row in service.cache.cached_images())


async def delete_cache_entry(request: Request) -> Response:
    """``DELETE /v2/cache/{image_id}``: 204; its unshared chunks go and it leaves the queue."""
    service = _admin_service(request)
    image_id = path_image_id(request)
    if service.registry.get(image_id) is None and not await run_in_threadpool(_known_to_cache, service, image_id):
        raise NotFound(f"Image {image_id} not found.")

    def evict() -> None:
        result = service.cache.evict_image(image_id)
        service.cache.dequeue_prefetch(image_id)
        log.info("evicted image %s from the cache: %s", image_id, result)

    await run_in_threadpool(evict)
    return Response(status_code=204)


async def clear_cache(request: Request) -> Response:
    """``DELETE /v2/cache``: 204; the header picks cache, queue or (empty/missing) both."""
    service = _admin_service(request)
    target = request.headers.get(CLEAR_TARGET_HEADER, "").strip().lower()
    if target not in _CLEAR_TARGETS:
        raise BadRequest(f"If provided '{CLEAR_TARGET_HEADER}' must be 'cache', 'queue' or empty string.")
    if target in ("", "queue"):
        # Queue first: a prefetch run must not refill what is being cleared.
        dequeued = await run_in_threadpool(service.cache.clear_queue)
        log.info("cleared the prefetch queue (%d images)", dequeued)
    if target in ("", "cache"):
        result = await service.cache.clear_cache()
        log.info("cleared the cache: %s", result)
    return Response(status_code=204)


async def prune_cache(request: Request) -> Response:
    """``POST /v2/cache/prune``: evict LRU chunks if over the high watermark."""
    service = _admin_service(request)
    result = await service.cache.prune()
    return json_response({"total_files_pruned": result.files, "total_bytes_pruned": result.bytes})


async def clean_cache(request: Request) -> Response:
    """``POST /v2/cache/clean``: remove stale temp files and orphans, fix the index."""
    service = _admin_service(request)
    result = await service.cache.clean()
    details = dataclasses.asdict(result)
    files = result.temp_files + result.fill_files + result.orphans_removed
    return json_response({"total_files_cleaned": files, **details})


async def get_cached_nodes(request: Request) -> Response:
    """``GET /v2/cache/nodes/{image_id}``: this node's URL if it holds the whole image."""
    service = _admin_service(request)
    image_id = path_image_id(request)
    service.registry.get_visible(caller(request), image_id)  # 404 for an unknown image
    rows = await run_in_threadpool(_complete_images, service)
    nodes = [str(request.base_url)] if any(row["image_id"] == image_id for row in rows) else []
    return json_response(nodes)


async def get_stats(request: Request) -> Response:
    """``GET /v2/cache/stats``: cache-wide counters (all processes) and the size limits."""
    service = _admin_service(request)
    stats: dict[str, Any] = dict(await run_in_threadpool(service.cache.stats))
    cache = service.cache
    stats.update(
        max_size=cache.max_size,
        high_watermark_bytes=int(cache.high_watermark * cache.max_size),
        low_watermark_bytes=int(cache.low_watermark * cache.max_size),
        chunk_size=cache.chunk_size,
    )
    return json_response(stats)


# Fixed paths come before /v2/cache/{image_id}, which would otherwise match them.
routes: list[BaseRoute] = [
    Route("/v2/cache", get_cache_state, methods=["GET"]),
    Route("/v2/cache", clear_cache, methods=["DELETE"]),
    Route("/v2/cache/stats", get_stats, methods=["GET"]),
    Route("/v2/cache/prune", prune_cache, methods=["POST"]),
    Route("/v2/cache/clean", clean_cache, methods=["POST"]),
    Route("/v2/cache/nodes/{image_id}", get_cached_nodes, methods=["GET"]),
    Route("/v2/cache/{image_id}", queue_image, methods=["PUT"]),
    Route("/v2/cache/{image_id}", delete_cache_entry, methods=["DELETE"]),
]
