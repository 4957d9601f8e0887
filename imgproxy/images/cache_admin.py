"""Cache administration (Glance's ``/v2/cache`` API): every call for admins only.

Calls that walk manifests run on the reader pool; those that write LMDB on the writer
thread, so a large cache never stalls the event loop.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from backends.base import BackendError, local_file
from cache import ImageCache

from ..context import RequestContext
from ..errors import BadRequest, Forbidden, NotFound
from ..ops.figures import cache_limits
from ..sources import image_copies, prefetch_queued

if TYPE_CHECKING:
    from ..service import Service

__all__ = ["CacheAdmin", "CLEAR_TARGETS", "image_progress"]

log = logging.getLogger("imgproxy.cache_api")

CLEAR_TARGETS = ("", "cache", "queue")  # "" is both


def image_progress(cache: ImageCache, image_id: str) -> dict[str, Any] | None:
    """``GET /v2/cache/{image_id}`` (an imgproxy extension, for ``imgproxy cache prefetch
    --wait``): ``cached_bytes`` of ``size`` (None while unknown), ``complete``, ``queued``;
    None when the cache neither holds nor queues the image. Blocking: run it off the loop."""
    row = cache.cached_image(image_id)
    queued = image_id in cache.queue.items()
    if row is None and not queued:
        return None
    return {"image_id": image_id, "cached_bytes": row["size"] if row else 0, "size": row["image_size"] if row else None,
            "complete": bool(row and row["complete"]), "queued": queued}


def _admin(ctx: RequestContext) -> None:
    if not ctx.is_admin:
        raise Forbidden("Managing the image cache is restricted to administrators.")


class CacheAdmin:
    """The cache management workflows of one process."""

    def __init__(self, service: "Service") -> None:
        self._s = service

    async def _complete_images(self) -> list[dict[str, Any]]:
        rows = await self._s.readers.run(self._s.cache.cached_images)
        return [row for row in rows if row["complete"]]

    async def state(self, ctx: RequestContext) -> tuple[list[dict[str, Any]], list[str]]:
        """Fully cached images (Glance's five fields) and the prefetch queue."""
        _admin(ctx)
        fields = ("image_id", "hits", "last_accessed", "last_modified", "size")
        cached = [{k: row[k] for k in fields} for row in await self._complete_images()]
        return cached, self._s.cache.queue.items()

    def _read_in_place(self, record: dict[str, Any]) -> bool:
        """The image's first copy is a file a local store serves in place: it is on this node's
        disk already and the cache keeps no copy of it (``[file] in_place``)."""
        try:
            copies = image_copies(self._s, record)
        except BackendError:
            return False
        return bool(copies) and local_file(copies[0][1], copies[0][2]) is not None

    async def queue(self, ctx: RequestContext, image_id: str) -> None:
        """Queue an active image and run the prefetcher now: 404 unknown, 400 unless active.
        An image read in place needs nothing: it is held whole already."""
        _admin(ctx)
        record = self._s.registry.get_visible(ctx, image_id)
        if record.get("status") != "active":
            raise BadRequest("Only images with status active can be targeted for queueing")
        if self._read_in_place(record):
            log.info("image %s is read in place from a local file store: nothing to prefetch", image_id)
            return
        await self._s.cache.queue.add_async(image_id)
        self._s.locations.full_read(image_id)  # the prefetch reads it all: verify it on the way
        self._kick_prefetcher()

    def _kick_prefetcher(self) -> None:
        """Run the prefetcher now instead of at its next interval.

        The run is a service task, so shutdown cancels it. Overlapping runs (this one, the
        loop's, another PUT's) are harmless: fills are single-flight, so an image being
        filled is read from upstream once.
        """

        async def run() -> None:
            try:
                result = await prefetch_queued(self._s)
                log.info("prefetch (on request): %s", result)
            except Exception:
                log.exception("prefetch (on request) failed; the loop retries")

        self._s.spawn(run(), "imgproxy-prefetch-now")

    async def evict(self, ctx: RequestContext, image_id: str) -> None:
        """Evict the image's unshared chunks and dequeue it; 404 when the image is unknown
        and neither cached nor queued."""
        _admin(ctx)
        cache = self._s.cache
        if self._s.registry.get(image_id) is None and image_id not in cache.queue.items():
            if not any(row["image_id"] == image_id for row in await self._s.readers.run(cache.cached_images)):
                raise NotFound(f"Image {image_id} not found.")

        def evict() -> None:
            result = cache.evict_image(image_id)
            cache.queue.remove(image_id)
            log.info("evicted image %s from the cache: %s", image_id, result)

        await cache.settle_fills(image_id)
        await self._s.writer.run(evict)

    async def clear(self, ctx: RequestContext, target: str) -> None:
        """Clear the cache, the queue or ("") both; 400 for another target."""
        _admin(ctx)
        if target not in CLEAR_TARGETS:
            raise BadRequest("If provided 'x-image-cache-clear-target' must be 'cache', 'queue' or empty string.")
        if target in ("", "queue"):
            # Queue first: a prefetch run must not refill what is being cleared.
            dequeued = await self._s.cache.queue.clear_async()
            log.info("cleared the prefetch queue (%d images)", dequeued)
        if target in ("", "cache"):
            result = await self._s.cache.clear_cache()
            log.info("cleared the cache: %s", result)

    async def prune(self, ctx: RequestContext) -> dict[str, int]:
        """Evict LRU chunks if over the high watermark (Glance's field names)."""
        _admin(ctx)
        result = await self._s.cache.prune()
        return {"total_files_pruned": result.files, "total_bytes_pruned": result.bytes}

    async def clean(self, ctx: RequestContext) -> dict[str, Any]:
        """Remove stale temp files and orphans, fix the index; what was cleaned."""
        _admin(ctx)
        result = await self._s.cache.clean()
        files = result.temp_files + result.fill_files + result.orphans_removed
        return {"total_files_cleaned": files, **dataclasses.asdict(result)}

    async def holds_whole(self, ctx: RequestContext, image_id: str) -> bool:
        """Whether this node holds the whole image (404 for an unknown image)."""
        _admin(ctx)
        record = self._s.registry.get_visible(ctx, image_id)
        if record.get("status") == "active" and self._read_in_place(record):
            return True
        return any(row["image_id"] == image_id for row in await self._complete_images())

    async def progress(self, ctx: RequestContext, image_id: str) -> dict[str, Any]:
        """:func:`image_progress` of an image ``ctx`` may see (404 otherwise)."""
        _admin(ctx)
        record = self._s.registry.get_visible(ctx, image_id)
        size = record.get("size")
        if record.get("status") == "active" and isinstance(size, int) and self._read_in_place(record):
            return {"image_id": image_id, "cached_bytes": size, "size": size, "complete": True, "queued": False}
        row = await self._s.readers.run(image_progress, self._s.cache, image_id)
        if row is None:
            return {"image_id": image_id, "cached_bytes": 0, "size": size, "complete": False, "queued": False}
        return {**row, "size": size if isinstance(size, int) else row["size"]}

    async def stats(self, ctx: RequestContext) -> dict[str, Any]:
        """Cache-wide counters (all processes) and the size limits."""
        _admin(ctx)
        cache = self._s.cache
        stats: dict[str, Any] = dict(await self._s.readers.run(cache.stats))
        stats.update(cache_limits(cache))
        return stats
