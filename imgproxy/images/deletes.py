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

Deleting one store's copy of an image (Glance's ``DELETE /v2/stores/{store}/{image}``) goes
the same way: the location goes and a journal entry of its own is written in one
transaction, and the reaper deletes the data from that store (after ``scrub_time`` with
delayed delete). The image lives on: its manifest and cached chunks stay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from backends import BackendError, BackendNotFound, WriteBackend

from .. import policy
from ..context import RequestContext
from ..errors import Conflict, Forbidden, NotFound
from ..registry import split_journal_key

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

    async def delete_copy(self, ctx: RequestContext, store: str, image_id: str) -> None:
        """Delete the image's copy in ``store``, checked in Glance's order: 409 for a store
        not configured, 404 unless the image is visible, 403 unless admin, 409 unless
        active, 403 for its last copy, 404 when ``store`` holds no copy. The location goes
        at once; the data after the call returns, through the reaper."""
        service = self._s
        if store not in service.backends.names:
            raise Conflict(f"The selected store {store[:64]} is not available on this node.")
        service.registry.get_visible(ctx, image_id)
        policy.check_admin(ctx, "delete image data from a store")

        def choose(record: dict[str, Any]) -> list[str]:
            if record["status"] == "pending_delete":
                raise NotFound(f"No image found with ID {image_id}")  # deleted, as far as the API tells
            if record["status"] != "active":
                raise Conflict("It's not allowed to remove image data from store if image status is not 'active'")
            locations = record.get("_locations") or []
            if len(locations) == 1:
                raise Forbidden("Cannot delete image data from the only store containing it. "
                                "Consider deleting the image instead.")
            store_of = service.images.imports.stores.of_location
            urls = [str(loc["url"]) for loc in locations if store_of(loc) == store]
            if not urls:
                raise NotFound(f"Image {image_id} is not stored in store {store}.")
            return urls

        settings = service.settings
        delay = settings.scrub_time if settings.delayed_delete else None
        key = await service.writer.run(
            lambda: service.registry.delete_copy(image_id, store, ctx=ctx, choose=choose, delay=delay))
        if not delay:
            service.spawn(self.reap(key), f"imgproxy-reap-{key}")

    async def reap(self, key: str | None = None) -> int:
        """Finish the journaled deletes that are due (all, or only the entry ``key``: an
        image id, or a copy's :func:`imgproxy.registry.journal_key`); returns how many were
        finished. A store that fails keeps its entry for the next run."""
        due_us = time.time_ns() // 1000
        entries = await self._s.readers.run(lambda: self._s.registry.pending_deletes(key, due_us=due_us))
        done = 0
        for entry, locations in entries:
            image_id, store = split_journal_key(entry)
            if store is None:
                await self._s.writer.run(self._s.cache.forget_image, image_id)
            else:
                # A copy made again since (same URL) is the image's data now: it stays.
                held = {str(loc.get("url")) for loc in self._s.registry.locations(image_id)}
                locations = [loc for loc in locations if loc["url"] not in held]
            if await self._delete_data(image_id, locations):
                await self._s.writer.run(self._s.registry.reaped, entry)
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
