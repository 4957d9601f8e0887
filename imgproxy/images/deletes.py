"""Deleting an image: the record (with a tombstone) in one transaction, its manifest,
then its data in the writable stores, after the answer."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from backends import BackendError, BackendNotFound, WriteBackend

from .. import policy
from ..context import RequestContext

if TYPE_CHECKING:
    from ..service import Service

__all__ = ["Deletes"]

log = logging.getLogger("imgproxy")


class Deletes:
    """The delete workflow of one process."""

    def __init__(self, service: "Service") -> None:
        self._s = service

    async def delete(self, ctx: RequestContext, image_id: str) -> None:
        """Delete the image (NotFound unless visible, Forbidden unless the caller may change
        it or when protected, Conflict from the status table); its data goes after the
        call returns."""
        registry = self._s.registry
        registry.get_visible(ctx, image_id)
        policy.check_write_role(ctx)
        old = await self._s.writer.run(lambda: registry.delete(image_id, ctx=ctx))
        await self._s.writer.run(self._s.cache.forget_image, image_id)
        locations: list[dict[str, Any]] = list(old.get("_locations") or [])
        self._s.spawn(self._delete_data(image_id, [str(loc.get("url", "")) for loc in locations]),
                      f"imgproxy-delete-{image_id}")

    async def _delete_data(self, image_id: str, locations: list[str]) -> None:
        """Remove a deleted image's bytes from the writable stores that hold them."""
        for url in locations:
            try:
                backend = self._s.backends.for_location(url)
                if isinstance(backend, WriteBackend):
                    await backend.delete(url)
            except BackendNotFound:
                pass
            except BackendError as exc:
                log.warning("could not delete data of image %s at %s: %s", image_id, url, exc)
