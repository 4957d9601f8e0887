"""Background passes over images registered by location (``POST /v2/images/{id}/locations``).

An image whose bytes live at an http(s) URL is read once, whole, through the cache (so
the pass also fills it), hashing md5 + sha512 on the way:

- **digest** pass (no validation data given): the image is ``saving``; on success it
  turns ``active`` with the digests, in the transaction that also stores them in its
  manifest. On upstream failure it goes back to ``queued`` without the location.
- **verify** pass (validation data given): the image is ``active`` at once. A whole
  ``GET`` of its data verifies it in line, holding back its last byte until the digests
  match (:mod:`imgproxy.images.verify`); ``PUT /v2/cache/{id}`` runs this pass alongside
  the prefetch, sharing its fills: ranged reads alone never pull the whole image from
  its store. A digest that differs from the client's turns it
  ``killed`` (and drops its cached chunks). An upstream failure leaves the pass owed
  for the next full read. Its hashing runs at the lowest CPU priority.

Registry and cache writes run on the process's LMDB writer thread.
The passes are tasks of the service, never of a request: they go on when the client
that registered the location has gone. Which passes are owed is in LMDB
(``Registry.location_passes``), so a restart resumes the digest passes (verify passes
wait for the next full read). Across worker processes a
pass runs in one process only (an ``flock`` per image under ``<data>/location-passes``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import lmdb

from backends import BackendError, ByteRange
from cache import CacheError, ImageDigests, Manifest
from cache.fill import try_lock, unlock

if TYPE_CHECKING:
    from .service import Service

__all__ = ["LocationPasses"]

log = logging.getLogger("imgproxy.locations")


class LocationPasses:
    """The running passes of one worker process. Lives on the event loop; not thread-safe.

    :meth:`start` spawns a pass; :meth:`resume` spawns every owed pass (start-up);
    :meth:`aclose` cancels them (they stay owed in LMDB and resume at the next start).
    """

    def __init__(self, service: "Service") -> None:
        self.service = service
        self.lock_dir = service.settings.data_dir / "location-passes"
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: set[str] = set()  # image ids with a pass task in this process

    def start(self, image_id: str, url: str, mode: str) -> None:
        if image_id in self._running:
            return
        task = asyncio.get_running_loop().create_task(self._guarded(image_id, url, mode),
                                                      name=f"location-{mode}-{image_id}")
        self._tasks.add(task)
        self._running.add(image_id)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            self._running.discard(image_id)

        task.add_done_callback(done)

    def full_read(self, image_id: str) -> None:
        """The whole of ``image_id`` is being read: start its verify pass if one is owed."""
        if image_id in self._running:
            return
        owed = self.service.registry.owed_pass(image_id)
        if owed is not None and owed[1] == "verify":
            self.start(image_id, owed[0], "verify")

    def resume(self) -> int:
        """Start every digest pass owed in LMDB; returns how many."""
        owed = [p for p in self.service.registry.location_passes() if p[2] == "digest"]
        for image_id, url, mode in owed:
            self.start(image_id, url, mode)
        if owed:
            log.info("resuming %d location passes", len(owed))
        return len(owed)

    async def wait(self) -> None:
        """Wait for the passes started so far (tests, graceful shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _guarded(self, image_id: str, url: str, mode: str) -> None:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        try:
            lock = self.lock_dir / f"{image_id}.lock"
            fd = try_lock(lock)
            if fd is None:
                return  # another worker runs it
            try:
                # It may have run in another worker between our listing and our lock.
                if self.service.registry.owed_pass(image_id) == (url, mode):
                    await self._run(image_id, url, mode)
            finally:
                unlock(lock, fd)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("location %s pass of image %s failed unexpectedly; retried at next start", mode, image_id)

    async def settle(self, image_id: str) -> bool | None:
        """Run the verify pass ``image_id`` owes (if any, and not running in another
        process) and wait for it: True if its data matches its validation data, False
        if it does not (it is killed), None if that is still unknown."""
        owed = self.service.registry.owed_pass(image_id)
        if owed is not None and owed[1] == "verify":
            self.start(image_id, owed[0], "verify")
            await asyncio.gather(*[t for t in self._tasks if t.get_name() == f"location-verify-{image_id}"],
                                 return_exceptions=True)
        record = self.service.registry.get(image_id)
        if record is None or record.get("status") == "killed":
            return False
        return True if self.service.registry.owed_pass(image_id) is None else None

    async def _run(self, image_id: str, url: str, mode: str) -> None:
        service = self.service
        write = service.writer.run
        record = service.registry.get(image_id)
        size = record.get("size") if record else None
        if record is None or size is None or record.get("status") == "deleted":
            await write(service.registry.drop_location, image_id, url)  # only forgets the owed pass
            return
        try:
            digests = await self._read_all(record, url, int(size), background=mode == "verify")
        except (CacheError, BackendError) as exc:
            if mode == "digest":
                await write(service.registry.drop_location, image_id, url)
                await write(service.cache.forget_image, image_id)
                log.error("image %s: could not read %s (%s); image is queued again without it", image_id, url, exc)
            else:
                log.error("image %s: could not verify %s (%s); retried at next start", image_id, url, exc)
            return
        if mode == "digest":
            await self._activate(image_id, url, digests)
        else:
            await self.conclude_verify(record, url, digests)

    async def _read_all(self, record: dict[str, Any], url: str, size: int, *, background: bool) -> ImageDigests:
        """Read the whole image through the cache (filling it); return its digests."""
        service = self.service
        image_id: str = record["id"]
        backend = service.backends.for_location(url)
        manifest = service.cache.get_manifest(image_id)
        if manifest is None or manifest.size != size:
            manifest = Manifest.unknown(size, service.settings.chunk_size, checksum=record.get("checksum"),
                                        os_hash_value=record.get("os_hash_value"))
            await service.writer.run(service.cache.put_manifest, image_id, manifest)
        # A verify pass checks an image already in service: its hashing yields the CPU to serving.
        digests = ImageDigests(background=background)
        try:
            async for piece in service.cache.read(image_id, manifest, ByteRange(0, size), backend, url,
                                                  count_hit=False):
                await asyncio.to_thread(digests.update, piece)
        finally:
            digests.close()
        if digests.size != size:
            raise BackendError(f"read {digests.size} of {size} bytes")
        return digests

    async def _activate(self, image_id: str, url: str, digests: ImageDigests) -> None:
        cache = self.service.cache

        def record_digests(txn: lmdb.Transaction) -> None:
            manifest = cache.manifests.get(txn, image_id)
            if manifest is not None:
                cache.record_manifest(txn, image_id, dataclasses.replace(
                    manifest, checksum=digests.checksum, os_hash_value=digests.os_hash_value))

        def activate() -> dict[str, Any] | None:
            cache.flush_access_times()  # fold addresses learned by the pass into the manifest first
            return self.service.registry.activate_location(
                image_id, url, checksum=digests.checksum, os_hash_algo=digests.os_hash_algo,
                os_hash_value=digests.os_hash_value, also=record_digests)

        active = await self.service.writer.run(activate)
        if active is None:
            log.info("image %s changed during its digest pass; digests discarded", image_id)
        else:
            log.info("image %s is active: %d bytes from %s", image_id, digests.size, url)

    async def conclude_verify(self, record: dict[str, Any], url: str, digests: ImageDigests) -> bool:
        """Compare the digests of the whole data at ``url`` with the image's validation
        data: record the pass done (True), or kill the image and drop its cache (False)."""
        image_id: str = record["id"]
        write = self.service.writer.run
        expected_md5 = record.get("checksum")
        if digests.os_hash_value != record.get("os_hash_value") or (
            expected_md5 and digests.checksum != expected_md5
        ):
            await write(self.service.registry.kill_location, image_id, url)
            await write(self.service.cache.forget_image, image_id)
            log.error("image %s: data at %s does not match its validation data (sha512 %s, md5 %s); killed",
                      image_id, url, digests.os_hash_value, digests.checksum)
            return False
        await write(lambda: self.service.registry.end_verify(image_id, url, checksum=digests.checksum))
        log.info("image %s: data at %s verified", image_id, url)
        return True
