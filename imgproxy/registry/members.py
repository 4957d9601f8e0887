"""Image members: who an image is shared with, and each membership's status; a membership's
index entries change with it, in its one transaction (the image's view does not show it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

import lmdb

from cache.txn import write_txn

from ..errors import Conflict, NotFound
from ..streams import member_keys
from .store import RecordStore, _dumps, _member_key, utc_now

__all__ = ["Members", "MEMBER_STATUSES"]

MEMBER_STATUSES = ("pending", "accepted", "rejected")


class Members(RecordStore):
    """The memberships of :class:`Registry`'s images (part of it)."""

    def _drop_member(self, txn: lmdb.Transaction, record: dict[str, Any], member: dict[str, Any]) -> None:
        self.index.reindex(txn, member_keys(record, member), set())
        txn.delete(_member_key(record["id"], member["member_id"]), db=self._members)

    def _put_member(self, txn: lmdb.Transaction, record: dict[str, Any], old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        # The image's view does not show memberships: only their index entries change.
        self.index.reindex(txn, member_keys(record, old) if old is not None else set(), member_keys(record, new))
        txn.put(_member_key(record["id"], new["member_id"]), _dumps(new), db=self._members)

    def list_members(self, image_id: str) -> list[dict[str, Any]]:
        with self.read() as txn:
            return self._member_rows(txn, image_id)

    def get_member(self, image_id: str, member: str) -> dict[str, Any] | None:
        with self.read() as txn:
            raw = txn.get(_member_key(image_id, member), db=self._members)
            return None if raw is None else cast(dict[str, Any], json.loads(cast(bytes, raw)))

    def add_member(self, image_id: str, member: str, *, check: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Add ``member`` as pending. ``check(record)`` runs first, in the transaction
        (policy); Conflict if already a member."""
        with write_txn(self.env) as txn:
            record = self.load(txn, image_id)
            if record is None:
                raise NotFound(f"No image found with ID {image_id}")
            check(record)
            if txn.get(_member_key(image_id, member), db=self._members) is not None:
                raise Conflict(f"{member} is already a member of image {image_id}")
            now = utc_now()[0]
            row = {"image_id": image_id, "member_id": member, "status": "pending", "created_at": now, "updated_at": now}
            self._put_member(txn, record, None, row)
            return row

    def set_member_status(self, image_id: str, member: str, status: str) -> dict[str, Any]:
        """Change a membership's status; NotFound if no such membership."""
        with write_txn(self.env) as txn:
            record = self.load(txn, image_id)
            raw = txn.get(_member_key(image_id, member), db=self._members)
            if record is None or raw is None:
                raise NotFound(f"{member} is not a member of image {image_id}")
            old = json.loads(bytes(raw))
            new = dict(old, status=status, updated_at=utc_now()[0])
            self._put_member(txn, record, old, new)
            return new

    def remove_member(self, image_id: str, member: str, *, check: Callable[[dict[str, Any]], None]) -> None:
        """Remove a membership; ``check(record)`` runs first; NotFound if absent."""
        with write_txn(self.env) as txn:
            record = self.load(txn, image_id)
            if record is None:
                raise NotFound(f"No image found with ID {image_id}")
            check(record)
            raw = txn.get(_member_key(image_id, member), db=self._members)
            if raw is None:
                raise NotFound(f"{member} is not a member of image {image_id}")
            self._drop_member(txn, record, json.loads(bytes(raw)))
