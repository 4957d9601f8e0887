"""The running service's resources, opened and closed by the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb

from backends import BackendError, Backends, UnknownStore
from cache import ImageCache
from cache.fill import try_lock, unlock
from cache.txn import DbWriter

from .auth import Authenticator, NoAuth
from .db import ReaderPool, open_env
from .images import Images
from .locations import LocationPasses
from .loops import start_loops
from .memory import IdleTrimmer
from .metadefs import Metadefs
from .ops.history import History, start_sampling
from .ops.metrics import Metrics, open_metrics
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
    loops_fd: int | None = None  # the loops lock, while this process runs the loops
    locations: LocationPasses = field(init=False)  # background passes of images added by URL
    images: Images = field(init=False)  # the workflows the API calls
    trimmer: IdleTrimmer = field(default_factory=IdleTrimmer)  # heap back to the OS when downloads end
    metrics: Metrics | None = None  # None: metrics = false
    history: History = field(default_factory=History)  # the status page's last hour
    _spawned: set[asyncio.Task[Any]] = field(default_factory=set)
    metadefs: Metadefs = field(init=False)  # the metadata definitions catalog

    def __post_init__(self) -> None:
        self.locations = LocationPasses(self)
        self.images = Images(self)
        self.metadefs = Metadefs(self.env, self.writer, self.readers.run)

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
        if self.loops_fd is not None:
            unlock(self.settings.data_dir / LOOPS_LOCK, self.loops_fd)
            self.loops_fd = None
        if self.metrics is not None:
            self.metrics.close()


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
    """The cache, with ``writer`` (the process's LMDB writer thread) if given; its own if not."""
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
        fill_read_chunks=settings.fill_read_chunks,
        max_fills=settings.max_fills,
        fill_memory=settings.fill_memory,
        writer=writer,
    )


async def _requeue_orphaned_uploads(service: Service) -> None:
    """Images left ``saving`` by a dead upload go back to ``queued``. Whatever that upload
    committed to the store goes first: while the image is still ``saving`` no new upload
    can write the same object, so only the dead upload's data is deleted."""
    cleared = []
    for image_id in await service.readers.run(service.registry.orphaned_uploads):
        record = service.registry.get(image_id) or {}
        try:
            store = service.backends.writable(record.get("_upload_store"))
            if store is not None:
                await store.delete(store.location_for(image_id))
        except UnknownStore:
            pass  # the store is no longer configured: nothing of ours to delete there
        except BackendError as exc:
            log.warning("could not delete what the dead upload of image %s stored (%s); it stays saving "
                        "until the next cleaner pass", image_id, exc)
            continue
        cleared.append(image_id)
    for image_id in await service.writer.run(service.registry.requeue_orphaned_uploads, cleared):
        log.warning("image %s was left saving by an upload whose process died; it is queued again", image_id)


async def _recover_imports(service: Service) -> None:
    failed = await service.images.imports.recover()
    if failed:
        log.warning("%d imports were interrupted by a stopped process; they failed (os_glance_failed_import)", failed)
    expired = await service.writer.run(service.images.imports.tasks.delete_expired)
    if expired:
        log.info("removed %d expired import tasks", expired)


async def _reap(service: Service) -> None:
    reaped = await service.images.deletes.reap()
    if reaped:
        log.info("removed the data of %d deleted images", reaped)


async def _sweep_store_temp(service: Service) -> None:
    """Remove the stores' temp files older than ``stale_temp_age`` (uploads a crash cut; a
    live upload keeps writing, so its file stays younger)."""
    removed = await service.backends.sweep_temp(service.settings.stale_temp_age)
    if removed:
        log.info("removed %d stale temp files from the stores", removed)


async def _clean(service: Service) -> None:
    """The cleaner loop's run: orphaned uploads, then the stores' and the cache's leftovers
    (unfinished deletes have their own loop, the reaper)."""
    await _requeue_orphaned_uploads(service)
    await _recover_imports(service)
    await _sweep_store_temp(service)
    await service.cache.clean()


async def _recover(service: Service) -> None:
    """Start-up recovery: uploads and stages cut by a crash are queued again; imports it
    interrupted fail; deletes it interrupted are finished; leftovers in the store and the
    cache go."""
    await _requeue_orphaned_uploads(service)
    await _recover_imports(service)
    await _reap(service)
    await _sweep_store_temp(service)
    result = await service.cache.clean()
    log.info("cache recovery: %s", result)


async def _check_stores(service: Service) -> None:
    """Warn, naming the store, when one cannot serve at start-up; the service runs on."""
    for name, problem in await service.backends.check(service.settings.upstream_timeout):
        log.warning("store %s is unavailable at start-up: %s; requests that need it get 503 until it recovers",
                    name, problem)


# With several workers one process runs start-up recovery and the background loops: the one
# holding this lock (the others wait to take over if it dies).
LOOPS_LOCK = "loops.lock"


async def _lead(service: Service, fd: int) -> None:
    """This process holds the loops lock: recover, then run the loops until shutdown."""
    from .sources import prefetch_queued

    service.loops_fd = fd
    settings = service.settings
    await _recover(service)
    service.tasks += start_loops(
        {
            "prune": (settings.prune_interval, service.cache.prune),
            "clean": (settings.clean_interval, lambda: _clean(service)),
            "reap": (settings.reap_interval, lambda: _reap(service)),
            "audit": (settings.clean_interval, service.cache.audit),
            "prefetch": (settings.prefetch_interval, lambda: prefetch_queued(service)),
        }
    )


async def _stand_by(service: Service, lock: Path) -> None:
    """Another worker runs the loops; take them over if it goes (its lock is freed with it)."""
    while (fd := try_lock(lock)) is None:
        await asyncio.sleep(1.0)
    log.info("this worker now runs start-up recovery and the background loops")
    await _lead(service, fd)


async def open_service(settings: Settings, *, loops: bool = True) -> Service:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    env = open_env(settings.data_dir, settings.lmdb_map_size)
    writer = DbWriter()
    registry = Registry(env)
    # Views and index streams of an older layout are rebuilt before any request is answered.
    await writer.run(registry.upgrade)
    backends = Backends(list(settings.stores.values()), settings.default_store, settings.extra)
    auth = open_authenticator(settings)
    cache = open_cache(settings, env, writer)
    service = Service(settings=settings, env=env, registry=registry, backends=backends, auth=auth, cache=cache,
                      writer=writer, metrics=open_metrics(settings))
    if loops:
        lock = settings.data_dir / LOOPS_LOCK
        fd = try_lock(lock)
        if fd is not None:
            await _lead(service, fd)
        else:
            service.tasks.append(asyncio.create_task(_stand_by(service, lock), name="imgproxy-stand-by"))
        service.tasks.append(asyncio.create_task(_check_stores(service)))
        service.tasks.append(start_sampling(service))
        service.locations.resume()
    return service
