"""Deleting images and copies, and the delete journal the reaper works through: the data a
delete leaves in the stores is journaled in the delete's own transaction, so a crash
between the two loses nothing (see the package docstring's ``delete_journal``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from cache.txn import write_txn

from ..context import RequestContext
from ..errors import Forbidden
from ..status import check_transition
from .store import RecordStore, _dumps, _member_key, utc_now

__all__ = ["Deletes", "journal_key", "split_journal_key"]


def journal_key(image_id: str, store: str | None = None) -> str:
    """The delete journal's key: the image's (whole image deleted), or one store's copy of it."""
    return image_id if store is None else f"{image_id}/{store}"


def split_journal_key(key: str) -> tuple[str, str | None]:
    """``(image_id, store)`` of a journal key; ``store`` is None for a whole image's entry."""
    image_id, _, store = key.partition("/")
    return image_id, store or None


class Deletes(RecordStore):
    """Deletes of :class:`Registry`'s images and copies, and their journal (part of it)."""

    def delete(self, image_id: str, *, ctx: RequestContext | None = None, delay: float | None = None) -> dict[str, Any]:
        """Delete a record (its indexes and members; a tombstone stays) and journal its data
        for the reaper. Returns the old record, its new ``status`` set.

        With ``delay`` (seconds; Glance's delayed delete) an image with data turns
        ``pending_delete`` instead of going, and the reaper takes it and its data not before
        ``delay`` seconds from now. With ``ctx``: NotFound unless visible, Forbidden unless
        modifiable or when protected.
        """
        with write_txn(self.env) as txn:
            old = self._modifiable(txn, ctx, image_id)
            if old.get("protected"):
                raise Forbidden(f"Image {image_id} is protected and cannot be deleted.")
            check_transition(old["status"], "deleted")
            locations = [{"url": str(loc["url"]), "store": (loc.get("metadata") or {}).get("store")}
                         for loc in old.get("_locations") or [] if loc.get("url")]
            deleted_at, now_us = utc_now()
            pending = delay is not None and bool(locations)
            members = self._member_rows(txn, image_id)
            if pending:
                # Its index entries (its memberships' too) go: no listing shows it.
                self._write(txn, old, dict(old, status="pending_delete", updated_at=deleted_at, _deleted_us=now_us))
            else:
                self._write(txn, old, None)  # with its memberships' index entries
            for member in members:
                txn.delete(_member_key(image_id, member["member_id"]), db=self._members)
            tomb = {"deleted_at": deleted_at, "owner": old.get("owner"), "_locations": old.get("_locations", [])}
            txn.put(image_id.encode(), _dumps(tomb), db=self._deleted)
            not_before = now_us + int((delay or 0) * 1e6) if pending else 0
            txn.put(image_id.encode(), _dumps({"locations": locations, "not_before": not_before}), db=self._journal)
        old["status"] = "pending_delete" if pending else "deleted"
        return old

    def delete_copy(self, image_id: str, store: str, *, ctx: RequestContext,
                    choose: Callable[[dict[str, Any]], list[str]], delay: float | None = None) -> str:
        """Drop the image's locations in ``store`` and journal their data for the reaper
        (not before ``delay`` seconds), in one transaction; returns the entry's key.

        ``choose(record)`` runs on the visible record (NotFound otherwise) and returns the
        URLs of the copy in ``store``, or raises what refuses the delete.
        """
        with write_txn(self.env) as txn:
            old = self._visible(txn, ctx, image_id)
            urls = choose(old)
            kept = [loc for loc in old.get("_locations") or [] if loc.get("url") not in urls]
            self._write(txn, old, dict(old, _locations=kept, updated_at=utc_now()[0]))
            key = journal_key(image_id, store)
            locations = [{"url": url, "store": store} for url in urls]
            earlier = txn.get(key.encode(), db=self._journal)  # a delete of this store's copy not reaped yet
            if earlier is not None:
                locations += [loc for loc in json.loads(bytes(earlier))["locations"] if loc not in locations]
            not_before = time.time_ns() // 1000 + int((delay or 0) * 1e6)
            txn.put(key.encode(), _dumps({"locations": locations, "not_before": not_before}), db=self._journal)
        return key

    def pending_deletes(self, image_id: str | None = None, *, due_us: int | None = None
                        ) -> list[tuple[str, list[dict[str, Any]]]]:
        """Deleted data that may remain, as ``(journal key, [{"url", "store"}])`` (a key is
        an image id, or a copy's :func:`journal_key`): only the entry of the key
        ``image_id`` when given; with ``due_us``, only entries due by then. Cost grows with
        the deletes not yet reaped."""
        def entry(raw: bytes) -> tuple[list[dict[str, Any]], int]:
            doc = json.loads(raw)
            # Entries of earlier versions list bare URLs.
            locations = [loc if isinstance(loc, dict) else {"url": loc, "store": None} for loc in doc["locations"]]
            return locations, int(doc.get("not_before", 0))

        with self.read() as txn:
            if image_id is not None:
                raw = txn.get(image_id.encode(), db=self._journal)
                rows = [] if raw is None else [(image_id, *entry(bytes(raw)))]
            else:
                rows = [(bytes(k).decode(), *entry(bytes(v))) for k, v in txn.cursor(db=self._journal)]
        return [(i, locations) for i, locations, not_before in rows if due_us is None or not_before <= due_us]

    def reaped(self, image_id: str) -> None:
        """The deleted image's data and manifest are gone: drop its journal entry, and its
        record if it was left ``pending_delete``."""
        with write_txn(self.env) as txn:
            txn.delete(image_id.encode(), db=self._journal)
            record = self.load(txn, image_id)
            if record is not None and record.get("status") == "pending_delete":
                self._write(txn, record, None)
