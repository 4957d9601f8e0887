"""Images registered by location (see :mod:`imgproxy.locations`) and the background pass
each still owes.

A ``location_passes`` entry (image id -> {"url", "mode"}) marks a background pass
still owed: "digest" (saving, digests unknown) or "verify" (active, digests given by
the client, not yet checked). It is written and removed in the same transaction as
the status change it goes with, so a restart finds exactly the passes to resume.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import lmdb

from cache.txn import write_txn

from ..context import RequestContext
from ..errors import Conflict
from .store import RecordStore, _dumps, _location, utc_now

__all__ = ["LocationPasses"]


class LocationPasses(RecordStore):
    """Images registered by location, and their owed passes (part of :class:`Registry`)."""

    def add_location(
        self,
        ctx: RequestContext,
        image_id: str,
        url: str,
        *,
        size: int,
        validation: dict[str, str] | None,
        store: str | None = None,
        also: Callable[[lmdb.Transaction], None] | None = None,
    ) -> dict[str, Any]:
        """Record ``url`` as a queued image's data: with ``validation`` (checksum optional,
        os_hash_algo, os_hash_value) queued -> active at once, owing a "verify" pass;
        without, queued -> saving, owing a "digest" pass. One transaction, with ``also``.

        Raises NotFound (not visible to ``ctx``), Conflict (not queued).
        """
        with write_txn(self.env) as txn:
            old = self._visible(txn, ctx, image_id)
            if old["status"] != "queued":
                raise Conflict(f"Image {image_id} is not queued (status {old['status']}); cannot add a location.")
            new = dict(old, size=size, _locations=[_location(url, store)], updated_at=utc_now()[0])
            if validation is not None:
                new.update(status="active", checksum=validation.get("checksum"), **{
                    k: validation[k] for k in ("os_hash_algo", "os_hash_value")})
            else:
                new["status"] = "saving"
            mode = "verify" if validation is not None else "digest"
            txn.put(image_id.encode(), _dumps({"url": url, "mode": mode}), db=self._passes)
            if also is not None:
                also(txn)
            self._write(txn, old, new)
            return new

    def location_passes(self) -> list[tuple[str, str, str]]:
        """Owed passes as ``(image_id, url, mode)``."""
        with self.read() as txn:
            return [
                (bytes(k).decode(), (v := json.loads(bytes(raw)))["url"], v["mode"])
                for k, raw in txn.cursor(db=self._passes)
            ]

    def owed_pass(self, image_id: str) -> tuple[str, str] | None:
        """``(url, mode)`` of the pass ``image_id`` owes, or ``None``."""
        with self.read() as txn:
            raw = txn.get(image_id.encode(), db=self._passes)
        if raw is None:
            return None
        entry = json.loads(bytes(raw))
        return entry["url"], entry["mode"]

    def _pass_target(self, txn: lmdb.Transaction, image_id: str, url: str) -> dict[str, Any] | None:
        """The record if it still owes a pass for ``url`` (not deleted, location unchanged)."""
        txn.delete(image_id.encode(), db=self._passes)
        record = self.load(txn, image_id)
        if record is None or record.get("status") == "deleted":
            return None
        if [loc.get("url") for loc in record.get("_locations") or []][:1] != [url]:
            return None
        return record

    def activate_location(
        self,
        image_id: str,
        url: str,
        *,
        checksum: str,
        os_hash_algo: str,
        os_hash_value: str,
        also: Callable[[lmdb.Transaction], None] | None = None,
    ) -> dict[str, Any] | None:
        """The digest pass succeeded: saving -> active with the digests (one txn with ``also``).

        Returns None (running nothing) if the image moved on meanwhile (deleted, ...).
        """
        with write_txn(self.env) as txn:
            old = self._pass_target(txn, image_id, url)
            if old is None or old["status"] != "saving":
                return None
            new = dict(old, status="active", checksum=checksum, os_hash_algo=os_hash_algo,
                       os_hash_value=os_hash_value, updated_at=utc_now()[0])
            if also is not None:
                also(txn)
            self._write(txn, old, new)
            return new

    def end_verify(self, image_id: str, url: str, *, checksum: str) -> dict[str, Any] | None:
        """The verify pass succeeded: the pass is no longer owed; a checksum the client did
        not give is filled in. Returns the record, None if it is gone."""
        with write_txn(self.env) as txn:
            old = self._pass_target(txn, image_id, url)
            if old is None or old.get("checksum"):
                return old
            new = dict(old, checksum=checksum, updated_at=utc_now()[0])
            self._write(txn, old, new)
            return new

    def kill_location(self, image_id: str, url: str) -> dict[str, Any] | None:
        """The verify pass found other bytes than the client's digests: -> killed.

        ``active|deactivated -> killed`` is not in Glance's table; it is an internal
        transition only this path uses (Glance kills an image whose data fails its
        checks). Returns the record, None if it is gone.
        """
        with write_txn(self.env) as txn:
            old = self._pass_target(txn, image_id, url)
            if old is None or old["status"] not in ("active", "deactivated", "saving"):
                return old
            # Its location goes too: a killed image has no data to serve (downloads: 204).
            new = dict(old, status="killed", _locations=[], updated_at=utc_now()[0])
            self._write(txn, old, new)
            return new

    def drop_location(self, image_id: str, url: str) -> dict[str, Any] | None:
        """The digest pass failed (upstream gone): saving -> queued, location and size removed."""
        with write_txn(self.env) as txn:
            old = self._pass_target(txn, image_id, url)
            if old is None or old["status"] != "saving":
                return old
            new = dict(old, status="queued", size=None, _locations=[], updated_at=utc_now()[0])
            self._write(txn, old, new)
            return new
