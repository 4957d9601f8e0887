"""The edge's own cache API (``/v2/cache``), for the edge's own admin tokens.

Same paths and answers as the service's (Glance's cache API, :mod:`imgproxy.api.cache_api`),
on the edge's cache alone (the edge keeps no image records). What differs is
where images are known: queueing asks the upstream with the edge's ``upstream_token``
(404 unknown, 400 not active, 502 when the upstream refuses that token), and the edge
knows only the images in its cache or queue. ``GET /v2/cache/stats`` adds the edge's
counters under ``edge``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..api.cache_api import cache_routes
from ..api.common import caller, json_response
from ..images.cache_admin import CLEAR_TARGETS, image_progress
from ..errors import BadGateway, BadRequest, Forbidden, NotFound, ServiceUnavailable
from .service import EdgeService, cacheable
from .upstream import UpstreamUnavailable

__all__ = ["routes"]


def _admin_service(request: Request) -> EdgeService:
    if not caller(request).is_admin:
        raise Forbidden("Managing the image cache is restricted to administrators.")
    service: EdgeService = request.app.state.service
    return service


def _known(service: EdgeService, image_id: str) -> bool:
    if image_id in service.cache.queue.items() or service.cache.get_manifest(image_id) is not None:
        return True
    return False


async def get_cache_state(request: Request) -> Response:
    """``GET /v2/cache``: fully cached images (Glance's five fields) and the queue."""
    service = _admin_service(request)
    rows = await asyncio.to_thread(service.cache.cached_images)
    fields = ("image_id", "hits", "last_accessed", "last_modified", "size")
    cached = [{k: row[k] for k in fields} for row in rows if row["complete"]]
    return json_response({"cached_images": cached, "queued_images": service.cache.queue.items()})


async def clear_cache(request: Request) -> Response:
    """``DELETE /v2/cache``: 204; ``x-image-cache-clear-target`` picks cache, queue or both."""
    service = _admin_service(request)
    target = request.headers.get("x-image-cache-clear-target", "").strip().lower()
    if target not in CLEAR_TARGETS:
        raise BadRequest("If provided 'x-image-cache-clear-target' must be 'cache', 'queue' or empty string.")
    if target in ("", "queue"):
        await service.cache.queue.clear_async()
    if target in ("", "cache"):
        await service.cache.clear_cache()
    return Response(status_code=204)


async def prune_cache(request: Request) -> Response:
    """``POST /v2/cache/prune``: evict LRU chunks if over the high watermark."""
    result = await _admin_service(request).cache.prune()
    return json_response({"total_files_pruned": result.files, "total_bytes_pruned": result.bytes})


async def clean_cache(request: Request) -> Response:
    """``POST /v2/cache/clean``: remove stale temp files and orphans, fix the index."""
    result = await _admin_service(request).cache.clean()
    files = result.temp_files + result.fill_files + result.orphans_removed
    return json_response({"total_files_cleaned": files, **dataclasses.asdict(result)})


async def queue_image(request: Request) -> Response:
    """``PUT /v2/cache/{image_id}``: 202 queued (and the prefetcher started)."""
    service = _admin_service(request)
    image_id = str(request.path_params["image_id"])
    try:
        answer = await service.show(image_id)
    except UpstreamUnavailable as exc:
        raise ServiceUnavailable(str(exc)) from exc
    if answer.status in (404, 410):
        raise NotFound(f"Image {image_id} not found.")
    if answer.status != 200:
        raise BadGateway(f"The upstream image API answered {answer.status} to this edge's upstream_token; "
                         "set upstream_token to a token that may read the image.")
    record = answer.json()
    if record.get("status") != "active":
        raise BadRequest("Only images with status active can be targeted for queueing")
    if not cacheable(record):
        raise BadRequest("The upstream names no digest for this image; the edge does not cache it.")
    await service.cache.queue.add_async(image_id)
    service.kick_prefetcher()
    return Response(status_code=202)


async def delete_cache_entry(request: Request) -> Response:
    """``DELETE /v2/cache/{image_id}``: 204; its unshared chunks go and it leaves the queue."""
    service = _admin_service(request)
    image_id = str(request.path_params["image_id"])
    if not await asyncio.to_thread(_known, service, image_id):
        raise NotFound(f"Image {image_id} not found.")

    def evict() -> None:
        service.cache.evict_image(image_id)
        service.cache.queue.remove(image_id)

    await service.cache.settle_fills(image_id)
    await asyncio.to_thread(evict)
    return Response(status_code=204)


async def get_cached_nodes(request: Request) -> Response:
    """``GET /v2/cache/nodes/{image_id}``: this edge's URL if it holds the whole image."""
    service = _admin_service(request)
    image_id = str(request.path_params["image_id"])
    rows = await asyncio.to_thread(service.cache.cached_images)
    whole = any(row["image_id"] == image_id and row["complete"] for row in rows)
    return json_response([str(request.base_url)] if whole else [])


async def get_stats(request: Request) -> Response:
    """``GET /v2/cache/stats``: the cache's counters and limits, and the edge's under ``edge``."""
    service = _admin_service(request)
    cache = service.cache
    stats: dict[str, Any] = dict(await asyncio.to_thread(cache.stats))
    stats.update(max_size=cache.max_size, high_watermark_bytes=int(cache.high_watermark * cache.max_size),
                 low_watermark_bytes=int(cache.low_watermark * cache.max_size), chunk_size=cache.chunk_size)
    stats["edge"] = {
        "upstream": service.upstream.base_url,
        "auth_checks": service.authorizer.checks,
        "auth_upstream_checks": service.authorizer.upstream_checks,
        "verify_passes": service.verifier.passes,
        "verify_mismatches": service.verifier.mismatches,
        "sequential_reads": service.backend.sequential.tapes_started,
    }
    return json_response(stats)


async def get_progress(request: Request) -> Response:
    """``GET /v2/cache/{image_id}``: how much of the image this edge holds (404 if nothing)."""
    service = _admin_service(request)
    image_id = str(request.path_params["image_id"])
    row = await asyncio.to_thread(image_progress, service.cache, image_id)
    if row is None:
        raise NotFound(f"Image {image_id} is neither cached nor queued on this edge.")
    return json_response(row)


routes = cache_routes(get_state=get_cache_state, clear=clear_cache, stats=get_stats, prune=prune_cache,
                      clean=clean_cache, nodes=get_cached_nodes, progress=get_progress, queue=queue_image,
                      delete=delete_cache_entry)
