"""The running service's resources, opened and closed by the app's lifespan."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import lmdb

from backends import BackendError, Backends
from cache import ImageCache
from cache.txn import DbWriter

from .auth import Authenticator, NoAuth
from .db import ReaderPool, open_env
from .images import Images
from .locations import LocationPasses
from .loops import start_loops
from .memory import IdleTrimmer
from .registry import Registry
from .settings import Settings

__all__ = ["Service", "open_service", "open_cache"]

log = logging.getLogger("imgproxy")


@dataclass
class Service:
    """Everything a request handler may use. One per worker process.

    LMDB writes go through ``writer`` (the process's one writer thread), scans that may
    touch many records through ``readers``; point reads may run on the event loop.
    """

    settings: Settings
    env: lmdb.Environment
    registry: Registry
    backends: Backends
    auth: Authenticator
    cache: ImageCache
    writer: DbWriter
    readers: ReaderPool = field(default_factory=ReaderPool)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    locations: LocationPasses = field(init=False)  # background passes of images added by URL
    images: Images = field(init=False)  # the workflows the API calls
    trimmer: IdleTrimmer = field(default_factory=IdleTrimmer)  # heap back to the OS when downloads end
    _spawned: set[asyncio.Task[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.locations = LocationPasses(self)
        self.images = Images(self)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Run ``coro`` as a task of the service (not of a request): it goes on when the
        client has gone, and shutdown cancels it. Its failure is logged."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._spawned.add(task)

        def done(task: asyncio.Task[Any]) -> None:
            self._spawned.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error("%s failed", task.get_name(), exc_info=task.exception())

        task.add_done_callback(done)

    async def aclose(self) -> None:
        await self.locations.aclose()
        tasks = [*self.tasks, *self._spawned]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.cache.aclose()
        await self.backends.aclose()
        await self.auth.aclose()
        self.readers.close()
        self.writer.close()
        self.env.close()


def open_authenticator(settings: Settings) -> Authenticator:
    """The ``auth`` mode's authenticator; the caller closes it (:meth:`Authenticator.aclose`)."""
    if settings.auth == "keystone":
        from .keystone import KeystoneAuth

        return KeystoneAuth.from_settings(settings)
    if not settings.auth_enabled:
        return NoAuth()
    from .tokens import TokensAuth

    return TokensAuth(settings.data_dir / "tokens.json")


def open_cache(settings: Settings, env: lmdb.Environment, writer: DbWriter | None = None) -> ImageCache:
    options: dict[str, Any] = {}
    # The cache shares the process's writer once its constructor takes one.
    if writer is not None and "writer" in inspect.signature(ImageCache).parameters:
        options["writer"] = writer
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
        **options,
    )


async def _requeue_orphaned_uploads(service: Service) -> None:
    """Images left ``saving`` by a dead upload go back to ``queued``. Whatever that upload
    committed to the store goes first: while the image is still ``saving`` no new upload
    can write the same object, so only the dead upload's data is deleted."""
    orphans = await service.readers.run(service.registry.orphaned_uploads)
    store = service.backends.writable
    for image_id in orphans if store is not None else ():
        try:
            await store.delete(store.location_for(image_id))
        except BackendError as exc:
            log.warning("could not delete what the dead upload of image %s stored (%s); it stays saving "
                        "until the next cleaner pass", image_id, exc)
            orphans.remove(image_id)
    for image_id in await service.writer.run(service.registry.requeue_orphaned_uploads, orphans):
        log.warning("image %s was left saving by an upload whose process died; it is queued again", image_id)


async def _reap(service: Service) -> None:
    reaped = await service.images.deletes.reap()
    if reaped:
        log.info("removed the data of %d deleted images", reaped)


async def _sweep_store_temp(service: Service) -> None:
    """Remove the store's temp files older than ``stale_temp_age`` (uploads a crash cut; a
    live upload keeps writing, so its file stays younger)."""
    sweep = getattr(service.backends.default, "sweep_temp", None)
    if sweep is not None:
        removed = await asyncio.to_thread(sweep, service.settings.stale_temp_age)
        if removed:
            log.info("removed %d stale temp files from the store", removed)


async def _clean(service: Service) -> None:
    """The cleaner loop's run: orphaned uploads, unfinished deletes, then the store's and the
    cache's leftovers."""
    await _requeue_orphaned_uploads(service)
    await _reap(service)
    await _sweep_store_temp(service)
    await service.cache.clean()


async def _recover(service: Service) -> None:
    """Start-up recovery: uploads cut by a crash are queued again; deletes a crash
    interrupted are finished; leftovers in the store and the cache go."""
    await _requeue_orphaned_uploads(service)
    await _reap(service)
    await _sweep_store_temp(service)
    result = await service.cache.clean()
    log.info("cache recovery: %s", result)


async def _check_stores(service: Service) -> None:
    """Warn, naming the store, when one cannot serve at start-up; the service runs on."""
    for name, problem in await service.backends.check(service.settings.upstream_timeout):
        log.warning("store %s is unavailable at start-up: %s; requests that need it get 503 until it recovers",
                    name, problem)


async def open_service(settings: Settings, *, loops: bool = True) -> Service:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    env = open_env(settings.data_dir, settings.lmdb_map_size)
    writer = DbWriter()
    registry = Registry(env)
    backends = Backends(settings.store_url, settings.extra)
    auth = open_authenticator(settings)
    cache = open_cache(settings, env, writer)
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
        service.tasks.append(asyncio.create_task(_check_stores(service)))
        service.locations.resume()
    return service
