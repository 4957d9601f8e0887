"""The running service's resources, opened and closed by the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import lmdb

from backends import Backends
from cache import ImageCache
from cache.txn import DbWriter

from .auth import Authenticator, NoAuth
from .db import open_env
from .locations import LocationPasses
from .loops import start_loops
from .memory import IdleTrimmer
from .metadefs import Metadefs
from .registry import Registry
from .settings import Settings

__all__ = ["Service", "open_service", "open_cache"]

log = logging.getLogger("imgproxy")


@dataclass
class Service:
    """Everything a request handler may use. One per worker process."""

    settings: Settings
    env: lmdb.Environment
    registry: Registry
    backends: Backends
    auth: Authenticator
    cache: ImageCache
    writer: DbWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    locations: LocationPasses = field(init=False)  # background passes of images added by URL
    trimmer: IdleTrimmer = field(default_factory=IdleTrimmer)  # heap back to the OS when downloads end
    metadefs: Metadefs = field(init=False)  # the metadata definitions catalog

    def __post_init__(self) -> None:
        self.locations = LocationPasses(self)
        self.metadefs = Metadefs(self.env, self.writer)

    async def aclose(self) -> None:
        await self.locations.aclose()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.cache.aclose()
        await self.backends.aclose()
        self.auth.close()
        self.writer.close()
        self.env.close()


def open_authenticator(settings: Settings) -> Authenticator:
    if not settings.auth_enabled:
        return NoAuth()
    from .tokens import TokensAuth

    return TokensAuth(settings.data_dir / "tokens.json")


def open_cache(settings: Settings, env: lmdb.Environment) -> ImageCache:
    return ImageCache(
        settings.data_dir / "cache",
        env,
        chunk_size=settings.chunk_size,
        max_size=settings.cache_max_size,
        high_watermark=settings.cache_high_watermark,
        low_watermark=settings.cache_low_watermark,
        upstream_retries=settings.upstream_retries,
        audit_bytes_per_second=settings.audit_bytes_per_second,
        stale_temp_age=settings.stale_temp_age,
        stall_timeout=settings.upstream_timeout,
        readahead_chunks=settings.readahead_chunks,
    )


async def _requeue_orphaned_uploads(service: Service) -> None:
    for image_id in await asyncio.to_thread(service.registry.requeue_orphaned_uploads):
        log.warning("image %s was left saving by an upload whose process died; it is queued again", image_id)


async def _clean(service: Service) -> None:
    """The cleaner loop's run: orphaned uploads, then the cache's leftovers."""
    await _requeue_orphaned_uploads(service)
    await service.cache.clean()


async def _recover(service: Service) -> None:
    """Start-up recovery: uploads cut by a crash are queued again; leftovers in the store
    and the cache go."""
    await _requeue_orphaned_uploads(service)
    store = service.backends.default
    sweep = getattr(store, "sweep_temp", None)
    if sweep is not None:
        removed = await asyncio.to_thread(sweep, service.settings.stale_temp_age)
        if removed:
            log.info("removed %d stale temp files from the store", removed)
    result = await service.cache.clean()
    log.info("cache recovery: %s", result)


async def open_service(settings: Settings, *, loops: bool = True) -> Service:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    env = open_env(settings.data_dir, settings.lmdb_map_size)
    writer = DbWriter()
    registry = Registry(env)
    backends = Backends(settings.store_url, settings.extra)
    auth = open_authenticator(settings)
    cache = open_cache(settings, env)
    service = Service(settings=settings, env=env, registry=registry, backends=backends, auth=auth, cache=cache,
                      writer=writer)
    if loops:
        await _recover(service)
        from .sources import prefetch_queued

        service.tasks = start_loops(
            {
                "prune": (settings.prune_interval, service.cache.prune),
                "clean": (settings.clean_interval, lambda: _clean(service)),
                "audit": (settings.clean_interval, service.cache.audit),
                "prefetch": (settings.prefetch_interval, lambda: prefetch_queued(service)),
            }
        )
        service.locations.resume()
    return service
