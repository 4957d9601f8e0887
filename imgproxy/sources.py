"""Where an image's bytes come from: its manifest in the cache and its store location."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from backends import ReadBackend
from cache import Manifest

from .ops.store_meter import MeteredStore

if TYPE_CHECKING:
    from .service import Service

__all__ = ["Source", "resolve_source", "prefetch_queued"]


@dataclass(frozen=True, slots=True)
class Source:
    """What the cache needs to serve or fill an image."""

    manifest: Manifest
    backend: ReadBackend
    location: str


async def resolve_source(service: "Service", record: dict[str, Any]) -> Source | None:
    """The image's source, or ``None`` when it has no data yet.

    An image without a manifest (registered by location, or stored before the cache
    knew it) gets one with unknown chunk addresses, learned by the first fill.
    Raises ``backends.BackendError`` when the store cannot tell the size.
    """
    locations = record.get("_locations") or []
    if not locations:
        return None
    location: str = locations[0]["url"]
    backend = service.backends.for_location(location)
    if service.metrics is not None:
        backend = MeteredStore(backend, urlsplit(location).scheme, service.metrics)
    image_id: str = record["id"]
    manifest = service.cache.get_manifest(image_id)
    if manifest is None:
        size = record.get("size")
        if size is None:
            size = await backend.size(location)
        manifest = Manifest.unknown(
            size,
            service.settings.chunk_size,
            checksum=record.get("checksum"),
            os_hash_value=record.get("os_hash_value"),
        )
        await service.writer.run(service.cache.put_manifest, image_id, manifest)
    return Source(manifest, backend, location)


async def prefetch_queued(service: "Service") -> object:
    """One run of the prefetcher: fill every queued image that is still active."""

    async def resolve(image_id: str) -> tuple[Manifest, ReadBackend, str] | None:
        record = service.registry.get(image_id)
        if record is None or record.get("status") not in ("active", "deactivated"):
            return None
        source = await resolve_source(service, record)  # a BackendError keeps it queued
        if source is None:
            return None
        return source.manifest, source.backend, source.location

    return await service.cache.prefetch_pending(resolve, service.settings.prefetch_concurrency)
