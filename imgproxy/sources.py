"""Where an image's bytes come from: its manifest in the cache and its copies in the stores."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from backends import BackendError, Copy, FailoverBackend, ReadBackend, local_file
from cache import Manifest

from .ops.store_meter import MeteredStore

if TYPE_CHECKING:
    from .service import Service

__all__ = ["Source", "resolve_source", "prefetch_queued", "image_copies"]

log = logging.getLogger("imgproxy")


@dataclass(frozen=True, slots=True)
class Source:
    """What the cache needs to serve or fill an image: ``backend`` reads ``location``
    (with several copies, a :class:`~backends.FailoverBackend` that falls back to the next)."""

    manifest: Manifest
    backend: ReadBackend
    location: str


def image_copies(service: "Service", record: dict[str, Any], prefer: Sequence[str] = ()) -> list[Copy]:
    """The image's copies as ``(store, backend, location)``, in the order reads try them:
    the ``prefer``red stores first, then by store weight (highest first), then as recorded.

    A location no backend can read now is left out (and logged); raises BackendError when
    that leaves none of several.
    """
    backends = service.backends
    copies: list[Copy] = []
    problem: BackendError | None = None
    for location in record.get("_locations") or []:
        url = str(location["url"])
        store = (location.get("metadata") or {}).get("store")
        try:
            backend = backends.for_location(url, store)
        except BackendError as exc:
            log.warning("image %s: its copy at %s cannot be read here (%s)", record["id"], url, exc)
            problem = exc
            continue
        copies.append((store or backends.store_of(url) or urlsplit(url).scheme, backend, url))
    if not copies and problem is not None:
        raise problem

    def rank(copy: Copy) -> tuple[int, int]:
        config = backends.configs.get(copy[0])
        return (0 if copy[0] in prefer else 1, -(config.weight if config is not None else 0))

    return sorted(copies, key=rank)


async def resolve_source(service: "Service", record: dict[str, Any], prefer: Sequence[str] = ()) -> Source | None:
    """The image's source, or ``None`` when it has no data yet.

    An image without a manifest (registered by location, or stored before the cache
    knew it) gets one with unknown chunk addresses, learned by the first fill.
    Raises ``backends.BackendError`` when no store can tell the size.
    """
    copies = image_copies(service, record, prefer)
    if not copies:
        return None
    store, backend, location = copies[0]
    if len(copies) > 1:
        backend = FailoverBackend(copies)
    # A local file store is read in place (cache.local_files), which the meter would hide.
    if service.metrics is not None and local_file(backend, location) is None:
        backend = MeteredStore(backend, store or urlsplit(location).scheme, service.metrics)
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
