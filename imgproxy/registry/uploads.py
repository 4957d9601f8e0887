"""The upload lifecycle of an image record (called by the data API): queued -> saving ->
active, or back to queued; and the uploads a dead process left ``saving``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lmdb

from cache.txn import write_txn

from .. import policy
from ..context import RequestContext
from ..errors import Conflict
from ..owners import current_owner, owner_alive
from ..streams import stream_prefix
from .store import RecordStore, _location, utc_now

__all__ = ["Uploads"]


class Uploads(RecordStore):
    """The upload lifecycle of :class:`Registry`'s images (part of it)."""

    def begin_upload(self, ctx: RequestContext, image_id: str, store: str | None = None) -> dict[str, Any]:
        """queued -> saving for a visible, modifiable image, atomically; ``store`` (kept as
        ``_upload_store`` until the upload ends) is where its data goes.

        Raises NotFound / Forbidden / Conflict("image is not queued").
        """
        with write_txn(self.env) as txn:
            old = self._visible(txn, ctx, image_id)
            policy.check_modify(ctx, old)
            if old["status"] != "queued":
                raise Conflict(f"Image {image_id} is not queued (status {old['status']}); its data cannot be uploaded.")
            new = dict(old, status="saving", updated_at=utc_now()[0], _upload_owner=current_owner(),
                       _upload_store=store)
            self._write(txn, old, new)
            return new

    def finish_upload(
        self,
        image_id: str,
        *,
        size: int,
        checksum: str,
        os_hash_algo: str,
        os_hash_value: str,
        location: str,
        virtual_size: int | None = None,
        store: str | None = None,
        also: Callable[[lmdb.Transaction], None] | None = None,
    ) -> dict[str, Any] | None:
        """saving -> active with the data's size, virtual size and digests, its one location in
        ``store``, in one transaction with ``also``.

        Returns None (and runs nothing) if the image was deleted or is no longer saving.
        """
        with write_txn(self.env) as txn:
            old = self.load(txn, image_id)
            if old is None or old.get("status") != "saving":
                return None
            old_without_owner = {k: v for k, v in old.items() if k not in ("_upload_owner", "_upload_store")}
            new = dict(
                old_without_owner,
                status="active",
                size=size,
                checksum=checksum,
                os_hash_algo=os_hash_algo,
                os_hash_value=os_hash_value,
                virtual_size=virtual_size,
                _locations=[_location(location, store)],
                updated_at=utc_now()[0],
            )
            if also is not None:
                also(txn)
            self._write(txn, old, new)
            return new

    def fail_upload(self, image_id: str) -> None:
        """saving -> queued; a no-op in any other state."""
        with write_txn(self.env) as txn:
            old = self.load(txn, image_id)
            if old is None or old.get("status") != "saving":
                return
            new = {k: v for k, v in old.items() if k not in ("_upload_owner", "_upload_store")}
            self._write(txn, old, dict(new, status="queued", updated_at=utc_now()[0]))

    def orphaned_uploads(self) -> list[str]:
        """Images left ``saving`` by an upload whose process died (read-only).

        Images ``saving`` for a location pass carry no upload owner and are left alone
        (their pass resumes).
        """
        with self.read() as txn:
            saving = [image_id for hidden in (False, True)
                      for _, image_id in self.walk(txn, stream_prefix("s", "saving", hidden=hidden))]
            orphans = []
            for image_id in saving:
                record = self.load(txn, image_id)
                owner = record.get("_upload_owner") if record else None
                if owner is not None and not owner_alive(owner):
                    orphans.append(image_id)
        return orphans

    def requeue_orphaned_uploads(self, orphans: list[str] | None = None) -> list[str]:
        """Put back to ``queued`` the images of :meth:`orphaned_uploads` (or ``orphans``, as
        that listed them) whose upload owner is still dead; returns the ids requeued."""
        requeued = []
        for image_id in self.orphaned_uploads() if orphans is None else orphans:
            with write_txn(self.env) as txn:
                old = self.load(txn, image_id)
                if old is None or old.get("_upload_owner") is None or owner_alive(old["_upload_owner"]):
                    continue
                new = {k: v for k, v in old.items() if k not in ("_upload_owner", "_upload_store")}
                self._write(txn, old, dict(new, status="queued", updated_at=utc_now()[0]))
                requeued.append(image_id)
        return requeued
