"""Interoperable image import, the background side: one run per task.

A run is a task of the service (:meth:`imgproxy.service.Service.spawn`), not of the
request that started it. It reads the data once from its source (the staged file, the
web-download URL through :mod:`imgproxy.webfetch`, the remote image API, or for copy-image
the image itself through the cache) into the first store and the cache (the upload's
ingest: md5, sha512 and chunk addresses in one pass), then copies it from the cache into
each further store. Each step commits with its image change and task change in one
transaction (:mod:`imgproxy.import_records`).

Failures follow Glance: with ``all_stores_must_succeed`` (the default) any store failing
fails the task, removes what the task wrote, and puts an ``importing`` image back to
``queued``; without it, a failing store is listed in ``os_glance_failed_import`` and the
others go on. A run cancelled by shutdown fails its task at once; a run whose process dies
(kill -9) is failed by the next start-up's recovery or the cleaner (``fail_orphan``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from anyio import CancelScope

from backends import BackendError, ByteRange, WriteBackend
from cache import OS_HASH_ALGO, CacheError

from ..errors import ApiError
from ..import_records import LOCK
from ..sources import resolve_source
from ..tasks import run_input
from ..webfetch import WebDownloadError, open_web_download
from .remote_glance import RemoteGlance, RemoteGlanceError
from ..formats import FormatRefused
from .uploads import inspector_for, refused, store_data

if TYPE_CHECKING:
    from ..service import Service
    from .imports import Imports

__all__ = ["ImportRunner", "ImportFailed"]

log = logging.getLogger("imgproxy.imports")

_EXPECTED = (ApiError, BackendError, CacheError, WebDownloadError, RemoteGlanceError, OSError)


class ImportFailed(Exception):
    """The import cannot go on; the message is the task's."""


@dataclass
class Source:
    """Where an import's bytes come from: ``open()`` gives them (again for each try)."""

    open: Callable[[], AbstractAsyncContextManager[AsyncIterator[bytes]]]
    size: int | None = None
    sha512: str | None = None  # what the remote says its data hashes to
    revert: dict[str, Any] = field(default_factory=dict)  # attributes to restore if it fails


def _message(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        return exc.message
    return str(exc) or type(exc).__name__


class ImportRunner:
    """The import runs of one process (on the event loop)."""

    def __init__(self, service: "Service", imports: "Imports") -> None:
        self._s = service
        self._i = imports
        self._running: dict[str, asyncio.Event] = {}
        # Imports one process runs at once (each holds a store writer, an ingest and a few
        # chunks of memory); more wait, their tasks ``pending``, for a slot.
        self._slots = asyncio.Semaphore(service.settings.max_uploads)

    def start(self, task: dict[str, Any], token: str | None) -> None:
        done = self._running[task["id"]] = asyncio.Event()

        async def run() -> None:
            try:
                await self._run(task, token)
            finally:
                done.set()
                self._running.pop(task["id"], None)

        self._s.spawn(run(), f"import-{task['id']}")

    async def wait(self) -> None:
        """Wait for the runs started so far (tests, shutdown)."""
        for event in list(self._running.values()):
            await event.wait()

    async def _run(self, task: dict[str, Any], token: str | None) -> None:
        imports, write = self._i, self._s.writer.run
        image_id, task_id = task["image_id"], task["id"]
        request = run_input(task)["import_req"]
        method = request["method"]["name"]
        stores: list[str] = list(run_input(task)["backend"])
        written: list[tuple[WriteBackend, str]] = []  # this run's data, removed if it fails
        revert: dict[str, Any] = {}
        try:
            async with self._slots:
                await write(imports.records.processing, task_id)
                source = await self._source(image_id, task_id, method, request, token)
                revert = source.revert
                await self._to_stores(image_id, task_id, method, stores, source, written,
                                      must=bool(request.get("all_stores_must_succeed", True)))
                await write(imports.records.succeed, image_id, task_id)
            log.info("import %s of image %s (%s) succeeded", task_id, image_id, method)
        except asyncio.CancelledError:
            with CancelScope(shield=True):
                await self._fail(task, "Interrupted: the service stopped during the import.", written, revert)
            raise
        except Exception as exc:
            if not isinstance(exc, (ImportFailed, *_EXPECTED)):
                log.exception("import %s of image %s failed unexpectedly", task_id, image_id)
            await self._fail(task, _message(exc), written, revert)
        if method == "glance-direct":
            await asyncio.to_thread(imports.staging.remove, image_id)

    async def _fail(self, task: dict[str, Any], message: str, written: list[tuple[WriteBackend, str]],
                    revert: dict[str, Any]) -> None:
        image_id = task["image_id"]
        log.error("import %s of image %s failed: %s", task["id"], image_id, message)
        for store, location in written:
            try:
                await store.delete(location)
            except BackendError:
                log.warning("could not delete %s, written by failed import %s", location, task["id"], exc_info=True)
        record = await self._s.writer.run(lambda: self._i.records.fail(
            image_id, task["id"], message, list(run_input(task)["backend"]), revert=revert,
            drop=[location for _, location in written]))
        if record is not None and record.get("status") == "queued":
            await self._s.writer.run(self._s.cache.forget_image, image_id)  # a manifest it may have recorded

    async def fail_orphan(self, task: dict[str, Any]) -> None:
        """Fail a task whose process died. What it may have committed to its stores and not
        recorded goes first (while the image still holds the task's lock, no other import
        writes there); then the image and task change; its staged data goes too."""
        image_id = task["image_id"]
        log.warning("import %s of image %s was interrupted (its process stopped); it fails", task["id"], image_id)
        record = self._s.registry.get(image_id) or {}
        kept = set() if record.get("status") == "importing" else {
            str(loc.get("url")) for loc in record.get("_locations") or []}
        for name in run_input(task)["backend"]:
            store = self._i.stores.writer(name)
            if store is None or record.get(LOCK) != task["id"] or store.location_for(image_id) in kept:
                continue
            try:
                await store.delete(store.location_for(image_id))
            except BackendError as exc:
                log.warning("could not delete what import %s stored in %s (%s); retried by the next cleaner pass",
                            task["id"], name, exc)
                return
        await self._s.writer.run(lambda: self._i.records.fail(
            image_id, task["id"], "Interrupted: the process running the import stopped.",
            list(run_input(task)["backend"])))
        await asyncio.to_thread(self._i.staging.remove, image_id)

    # ---- sources ----------------------------------------------------------------------

    async def _source(self, image_id: str, task_id: str, method: str, request: dict[str, Any],
                      token: str | None) -> Source:
        imports = self._i
        if method == "glance-direct":
            record = self._s.registry.get(image_id) or {}

            @asynccontextmanager
            async def staged() -> AsyncIterator[AsyncIterator[bytes]]:
                if not imports.staging.exists(image_id):
                    raise ImportFailed(f"No staged data for image {image_id}.")
                yield imports.staging.read(image_id)

            return Source(staged, size=record.get("size"))
        if method == "web-download":
            settings = self._s.settings
            uri = str(request["method"].get("uri"))

            @asynccontextmanager
            async def web() -> AsyncIterator[AsyncIterator[bytes]]:
                async with open_web_download(uri, imports.url_filter, timeout=settings.upstream_timeout) as body:
                    yield body.pieces()

            return Source(web)
        if method == "glance-download":
            return await self._remote_source(image_id, task_id, request["method"], token)
        return await self._copy_source(image_id)

    async def _remote_source(self, image_id: str, task_id: str, method: dict[str, Any], token: str | None) -> Source:
        regions = self._i.regions
        base, region_token = regions.find(str(method["glance_region"]),
                                          str(method.get("glance_service_interface") or "public"))
        remote_id = str(method["glance_image_id"])
        use_token = region_token or token
        async with RemoteGlance(base, use_token, regions.timeout) as remote:
            image = await remote.image(remote_id)
        if image.get("status") != "active":
            raise ImportFailed(f"Source image status should be active instead of {image.get('status')}")
        size = image.get("size")
        if not isinstance(size, int):
            raise ImportFailed(f"Size attribute of remote image {remote_id} could not be determined.")
        record = self._s.registry.get(image_id) or {}
        attrs = {"disk_format": image.get("disk_format"), "container_format": image.get("container_format"),
                 **regions.properties_to_copy(image)}
        revert = {key: record.get(key) for key in attrs}
        await self._s.writer.run(self._i.records.set_metadata, image_id, task_id, attrs)

        @asynccontextmanager
        async def data() -> AsyncIterator[AsyncIterator[bytes]]:
            async with RemoteGlance(base, use_token, regions.timeout) as reader:
                yield reader.data(remote_id)

        sha512 = image.get("os_hash_value") if image.get("os_hash_algo") == OS_HASH_ALGO else None
        return Source(data, size=size, sha512=sha512, revert=revert)

    async def _copy_source(self, image_id: str) -> Source:
        service = self._s
        record = service.registry.get(image_id)
        source = await resolve_source(service, record) if record else None
        if record is None or source is None:
            raise ImportFailed(f"Image {image_id} has no data to copy.")

        @asynccontextmanager
        async def cached() -> AsyncIterator[AsyncIterator[bytes]]:
            pieces = service.cache.read(image_id, source.manifest, ByteRange(0, source.manifest.size), source.backend,
                                        source.location)
            yield (bytes(piece) async for piece in pieces)

        return Source(cached, size=source.manifest.size)

    # ---- stores -----------------------------------------------------------------------

    async def _to_stores(self, image_id: str, task_id: str, method: str, stores: list[str], source: Source,
                         written: list[tuple[WriteBackend, str]], *, must: bool) -> None:
        done = 0
        for index, name in enumerate(stores):
            last = index == len(stores) - 1
            try:
                await self._to_store(image_id, task_id, method, name, source, written,
                                     activate=last or not must, first=done == 0)
                done += 1
            except Exception as exc:
                if must:
                    raise
                log.warning("import %s: store %s failed (%s); all_stores_must_succeed is false, going on",
                            task_id, name, _message(exc))
                await self._s.writer.run(self._i.records.store_failed, image_id, task_id, name)
        if done == 0:
            raise ImportFailed("None of the uploads finished!")

    async def _to_store(self, image_id: str, task_id: str, method: str, name: str, source: Source,
                        written: list[tuple[WriteBackend, str]], *, activate: bool, first: bool) -> None:
        service = self._s
        store = self._i.stores.writer(name)
        if store is None:
            raise ImportFailed(f"Store {name} cannot be written.")
        if method == "copy-image" or not first:
            if not first:  # the data is in the cache now: copy from there
                source = await self._copy_source(image_id)
            location = await _copy_into(store, image_id, source.open)
            written.append((store, location))
            await service.writer.run(lambda: self._i.records.store_done(
                image_id, task_id, name, location, activate=activate))
            return
        record = service.registry.get(image_id) or {}
        try:
            async with source.open() as body:
                stored = await store_data(service, image_id, body, store, service.settings.image_size_cap, source.size,
                                          inspector_for(record))
        except FormatRefused as exc:
            raise ImportFailed(refused(exc, record.get("disk_format")).message) from exc
        written.append((store, stored.location))
        manifest = stored.manifest
        if source.sha512 is not None and manifest.os_hash_value != source.sha512:
            raise ImportFailed(f"The downloaded data does not match the remote image's os_hash_value "
                               f"(got {manifest.os_hash_value}).")
        data = {"size": stored.size, "checksum": manifest.checksum, "os_hash_algo": OS_HASH_ALGO,
                "os_hash_value": manifest.os_hash_value}
        if stored.virtual_size is not None:
            data["virtual_size"] = stored.virtual_size
        await service.writer.run(lambda: self._i.records.store_done(
            image_id, task_id, name, stored.location, activate=activate, data=data,
            also=lambda txn: service.cache.record_manifest(txn, image_id, manifest)))


async def _copy_into(store: WriteBackend, image_id: str,
                     open_body: Callable[[], AbstractAsyncContextManager[AsyncIterator[bytes]]]) -> str:
    """Write the body into ``store``; its location. Aborts the writer on any failure."""
    writer = await store.open_writer(image_id)
    try:
        async with open_body() as body:
            async for piece in body:
                await writer.write(piece)
        return await writer.commit()
    except BaseException:
        with CancelScope(shield=True):
            await writer.abort()
        raise
