"""The :class:`Registry`: its parts (members, uploads, location passes, deletes) in one class,
and the record reads and writes they do not own (get, create, update, set_status)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import lmdb

from cache.txn import write_txn

from ..context import RequestContext
from ..errors import Conflict
from ..status import check_transition
from .deletes import Deletes
from .members import Members
from .passes import LocationPasses
from .store import RecordStore, _dumps, utc_now
from .uploads import Uploads

__all__ = ["Registry"]


class Registry(Members, Uploads, LocationPasses, Deletes, RecordStore):
    """Image records in LMDB; see the package docstring for the layout.

    Thread-safe and process-safe as LMDB is: readers never block, writers serialize.
    """

    # ---- reads ------------------------------------------------------------------------

    def get(self, image_id: str) -> dict[str, Any] | None:
        """The raw record; None if missing or deleted."""
        with self.read() as txn:
            return self.load(txn, image_id)

    def locations(self, image_id: str) -> list[dict[str, Any]]:
        record = self.get(image_id)
        return list(record.get("_locations") or []) if record else []

    def is_deleted(self, image_id: str) -> bool:
        with self.read() as txn:
            return txn.get(image_id.encode(), db=self._deleted) is not None

    # ---- record writes ----------------------------------------------------------------

    def create(self, record: dict[str, Any]) -> dict[str, Any]:
        """Insert a new record (with ``id``, ``_created_us``); Conflict if the id was ever used."""
        with write_txn(self.env) as txn:
            self._insert(txn, record)
        return record

    def create_many(self, records: Iterable[dict[str, Any]]) -> int:
        """Insert many records in one transaction (bulk loads, benchmarks)."""
        n = 0
        with write_txn(self.env) as txn:
            for record in records:
                self._insert(txn, record)
                n += 1
        return n

    def _insert(self, txn: lmdb.Transaction, record: dict[str, Any]) -> None:
        key = record["id"].encode()
        if txn.get(key, db=self._images) is not None or txn.get(key, db=self._deleted) is not None:
            raise Conflict(f"An image with identifier {record['id']} already exists")
        self._write(txn, None, record)

    def update(
        self,
        image_id: str,
        change: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        ctx: RequestContext | None = None,
    ) -> dict[str, Any]:
        """Read-modify-write one record atomically.

        ``change(record_copy)`` returns the new record (it may raise an ApiError, which
        aborts the transaction). With ``ctx``, the image must be visible (else NotFound)
        and modifiable by it (else Forbidden) first. ``updated_at`` is set here.
        """
        with write_txn(self.env) as txn:
            old = self._modifiable(txn, ctx, image_id)
            new = change(json.loads(_dumps(old)))
            new["id"], new["_created_us"] = old["id"], old["_created_us"]
            new["updated_at"] = utc_now()[0]
            self._write(txn, old, new)
            return new

    def set_status(self, image_id: str, target: str, *, ctx: RequestContext | None = None) -> dict[str, Any]:
        """Move an image to ``target`` following the transition table (Conflict otherwise)."""

        def change(record: dict[str, Any]) -> dict[str, Any]:
            check_transition(record["status"], target)
            record["status"] = target
            return record

        return self.update(image_id, change, ctx=ctx)
