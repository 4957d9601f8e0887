"""Deleting an image, crash-safe: a journal entry, then a reaper.

The record's delete and a journal entry naming the image's locations (each with its
store) commit in one transaction (:meth:`imgproxy.registry.Registry.delete`). The reaper
then forgets the image's manifest (and the chunks only it referenced), deletes its data
from every writable store that holds a copy, and only then drops the journal entry. It
runs for the image right after the delete is answered, in every reaper loop run, and at
start-up recovery: a crash or a failing store leaves the entry, and the next run
finishes the work.

With ``delayed_delete`` (Glance's scrubber) the image turns ``pending_delete`` instead
(admins still see it; nobody can read its data), and the reaper removes its data and
record once ``scrub_time`` seconds have passed, whatever crashed in between.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from backends import BackendError, BackendNotFound, WriteBackend

from .. import policy
from ..context import RequestContext

if TYPE_CHECKING:
    from ..service import Service

__all__ = ["Deletes"]

log = logging.getLogger("imgproxy")


class Deletes:
    """The delete workflow and the reaper of one process."""

    def __init__(self, service: "Service") -> None:
        self._s = service

    async def delete(self, ctx: RequestContext, image_id: str) -> None:
        """Delete the image (NotFound unless visible, Forbidden unless the caller may change
        it or when protected, Conflict from the status table); its data goes after the
        call returns, through the reaper (after ``scrub_time`` with delayed delete)."""
        registry = self._s.registry
        registry.get_visible(ctx, image_id)
        policy.check_write_role(ctx)
        settings = self._s.settings
        delay = settings.scrub_time if settings.delayed_delete else None
        old = await self._s.writer.run(lambda: registry.delete(image_id, ctx=ctx, delay=delay))
        # Gone from the cache before the answer (readers see it at once); the reaper does
        # it again (idempotent) if a crash comes first.
        await self._s.writer.run(self._s.cache.forget_image, image_id)
        # Data glance-direct staged for it (the cleaner's sweep would find it later).
        await asyncio.to_thread(self._s.images.imports.staging.remove, image_id)
        if old["status"] == "deleted":
            self._s.spawn(self.reap(image_id), f"imgproxy-reap-{image_id}")

    async def reap(self, image_id: str | None = None) -> int:
        """Finish the journaled deletes that are due (all, or only ``image_id``'s); returns
        how many were finished. A store that fails keeps its entry for the next run."""
        due_us = time.time_ns() // 1000
        entries = await self._s.readers.run(
            lambda: self._s.registry.pending_deletes(image_id, due_us=due_us))
        done = 0
        for deleted_id, locations in entries:
            await self._s.writer.run(self._s.cache.forget_image, deleted_id)
            if await self._delete_data(deleted_id, locations):
                await self._s.writer.run(self._s.registry.reaped, deleted_id)
                done += 1
        return done

    async def _delete_data(self, image_id: str, locations: list[dict[str, Any]]) -> bool:
        """Remove the bytes from every writable store that holds a copy; False if any stayed."""
        gone = True
        for location in locations:
            url = str(location["url"])
            try:
                backend = self._s.backends.for_location(url, location.get("store"))
                if isinstance(backend, WriteBackend):
                    await backend.delete(url)
            except BackendNotFound:
                pass
            except BackendError as exc:
                gone = False
                log.warning("could not delete data of deleted image %s at %s (%s); the reaper retries",
                            image_id, url, exc)
        return gone
