"""The registry's record store: its databases, how a record, its stored view and its index
entries are written together, and the reads every part of the registry builds on (a
record, its view, who may see and change it). See the package docstring for the layout."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from datetime import datetime, timezone
from typing import Any, cast

import lmdb

from cache.txn import write_txn

from .. import policy
from ..context import RequestContext
from ..errors import NotFound
from ..index import Index
from ..streams import member_keys, record_keys
from ..views import image_json

__all__ = ["RecordStore", "utc_now", "format_time", "LAYOUT"]

# The version of the views and index layout; a different one is rebuilt by ``upgrade``.
LAYOUT = b"3"
_UPGRADE_BATCH = 2000  # records per upgrade transaction (a bounded dirty set)


def utc_now() -> tuple[str, int]:
    """Now as (ISO 8601 seconds ``...Z`` as Glance shows it, microseconds since the epoch)."""
    us = time.time_ns() // 1000
    return format_time(us), us


def format_time(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _member_key(image_id: str, member: str) -> bytes:
    return f"{image_id}\0{member}".encode()


def _location(url: str, store: str | None) -> dict[str, Any]:
    """A location as Glance keeps it: its URL, and the id of the store holding it in ``metadata``."""
    return {"url": url, "metadata": {"store": store} if store else {}}


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _stored_view(record: dict[str, Any]) -> bytes:
    """``<header length 2B><vis length 1B><vis><owner, or 0xff for none><view JSON>``: who may
    see the image and what they are shown, read together by one get."""
    # A pending_delete image is shown to admins only: no visibility or owner lets others in.
    pending = record.get("status") == "pending_delete"
    vis = b"pending_delete" if pending else str(record.get("visibility")).encode()
    owner = None if pending else record.get("owner")
    owner_bytes = b"\xff" if owner is None else str(owner).encode("utf-8", "surrogatepass")
    header = bytes([len(vis)]) + vis + owner_bytes
    return len(header).to_bytes(2, "big") + header + image_json(record)


def _view_start(raw: bytes) -> int:
    return 2 + (raw[0] << 8 | raw[1])


def _split_view(raw: bytes) -> tuple[str, str | None, bytes]:
    """(visibility, owner, view JSON) of a stored view."""
    start, vend = _view_start(raw), 3 + raw[2]
    owner = raw[vend:start]
    # 0xff never starts UTF-8 text, so it cannot be an owner's spelling.
    return raw[3:vend].decode(), None if owner == b"\xff" else owner.decode("utf-8", "surrogatepass"), raw[start:]


class RecordStore:
    """Image records in LMDB, their stored views and index entries kept in step; the base of
    :class:`Registry`, whose parts (members, uploads, location passes, deletes) write through it.

    Thread-safe and process-safe as LMDB is: readers never block, writers serialize.
    """

    def __init__(self, env: lmdb.Environment) -> None:
        self.env = env
        self._images = env.open_db(b"images")
        self.index = Index(env)
        self._idx = self.index.db
        self._members = env.open_db(b"members")
        self._deleted = env.open_db(b"deleted")
        self._passes = env.open_db(b"location_passes")
        self._journal = env.open_db(b"delete_journal")
        self._views = env.open_db(b"views")
        self._meta = env.open_db(b"registry_meta")

    # ---- low-level, used inside one transaction -------------------------------------

    def read(self) -> lmdb.Transaction:
        """A read transaction for several lookups (listing); use as a context manager."""
        return self.env.begin(write=False, buffers=False)

    def load(self, txn: lmdb.Transaction, image_id: str) -> dict[str, Any] | None:
        raw = cast(bytes | None, txn.get(image_id.encode(), db=self._images))
        return None if raw is None else cast(dict[str, Any], json.loads(raw))

    def member_status(self, txn: lmdb.Transaction, image_id: str, member: str) -> str | None:
        raw = cast(bytes | None, txn.get(_member_key(image_id, member), db=self._members))
        return None if raw is None else str(json.loads(raw)["status"])

    def walk(self, txn: lmdb.Transaction, prefix: bytes, before: bytes | None = None) -> Iterator[tuple[bytes, str]]:
        """``(order, image_id)`` of one stream, newest first (see :meth:`Index.walk`)."""
        return self.index.walk(txn, prefix, before)

    def views(self, txn: lmdb.Transaction, ids: Iterable[bytes]) -> list[bytes]:
        """The stored view JSON of each image of ``ids`` (encoded ids) that exists, in order."""
        get = cast(Callable[[bytes], bytes | None], partial(txn.get, db=self._views))
        found = map(get, ids)
        # A page's hot loop: the header skipped inline (see _view_start).
        return [raw[2 + (raw[0] << 8 | raw[1]):] for raw in found if raw is not None]

    def _keys(self, record: dict[str, Any], members: list[dict[str, Any]]) -> set[bytes]:
        if record.get("status") == "pending_delete":
            return set()  # deleted as far as listings go (Glance's deleted rows)
        keys = record_keys(record)
        for member in members:
            keys |= member_keys(record, member)
        return keys

    def _write(self, txn: lmdb.Transaction, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        """Store ``new`` (or delete ``old`` when ``new`` is None), keeping its view and its
        index entries (its memberships' too) in step."""
        members = self._member_rows(txn, old["id"]) if old is not None else []
        old_keys = self._keys(old, members) if old is not None else set()
        new_keys = self._keys(new, members) if new is not None else set()
        self.index.reindex(txn, old_keys, new_keys)
        if new is not None:
            txn.put(new["id"].encode(), _dumps(new), db=self._images)
            txn.put(new["id"].encode(), _stored_view(new), db=self._views)
        elif old is not None:
            txn.delete(old["id"].encode(), db=self._images)
            txn.delete(old["id"].encode(), db=self._views)

    def upgrade(self, batch: int = _UPGRADE_BATCH) -> int:
        """Rebuild the views and the index from the records if the environment holds an older
        layout (or none); a no-op when current. Returns the records rebuilt.

        Runs in transactions of a bounded number of records, resuming from a mark kept in
        the last one, so a crash or a second process running it at the same time continues
        the same rebuild. Call before serving: until it returns, listings would be wrong.
        """
        done = 0
        while True:
            with write_txn(self.env) as txn:
                if txn.get(b"layout", db=self._meta) == LAYOUT:
                    return done
                after = cast(bytes | None, txn.get(b"rebuilt_through", db=self._meta))
                if after is None:
                    txn.drop(self._idx, delete=False)
                    txn.drop(self._views, delete=False)
                cursor = txn.cursor(db=self._images)
                more = cursor.set_range(after + b"\0") if after is not None else cursor.first()
                n = 0
                while more and n < batch:
                    key, raw = cast(bytes, cursor.key()), cast(bytes, cursor.value())
                    record = cast(dict[str, Any], json.loads(raw))
                    for index_key in self._keys(record, self._member_rows(txn, record["id"])):
                        txn.put(index_key, b"", db=self._idx)
                    txn.put(key, _stored_view(record), db=self._views)
                    after, n = key, n + 1
                    more = cursor.next()
                done += n
                if more:
                    assert after is not None
                    txn.put(b"rebuilt_through", after, db=self._meta)
                else:
                    txn.delete(b"rebuilt_through", db=self._meta)
                    txn.put(b"layout", LAYOUT, db=self._meta)

    def save(self, txn: lmdb.Transaction, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        """Write ``new`` over ``old`` (as loaded in ``txn``) inside the caller's write
        transaction, indexes in step; sets ``updated_at``. Returns ``new``."""
        new["id"], new["_created_us"] = old["id"], old["_created_us"]
        new["updated_at"] = utc_now()[0]
        self._write(txn, old, new)
        return new

    def _member_rows(self, txn: lmdb.Transaction, image_id: str) -> list[dict[str, Any]]:
        prefix = f"{image_id}\0".encode()
        cursor = txn.cursor(db=self._members)
        rows = []
        if cursor.set_range(prefix):
            for key, value in cursor:
                if not cast(bytes, key).startswith(prefix):
                    break
                rows.append(cast(dict[str, Any], json.loads(cast(bytes, value))))
        return rows

    # ---- reads ------------------------------------------------------------------------

    def _visible(self, txn: lmdb.Transaction, ctx: RequestContext, image_id: str) -> dict[str, Any]:
        record = self.load(txn, image_id)
        if record is None or record.get("status") == "deleted":
            raise NotFound(f"No image found with ID {image_id}")
        if record.get("status") == "pending_delete" and not ctx.is_admin:
            raise NotFound(f"No image found with ID {image_id}")  # deleted, as far as users can tell
        status = None if ctx.is_admin else self.member_status(txn, image_id, ctx.project_id)
        if not policy.is_visible(ctx, record, status):
            raise NotFound(f"No image found with ID {image_id}")
        return record

    def get_visible(self, ctx: RequestContext, image_id: str) -> dict[str, Any]:
        """The record if ``ctx`` may see it; NotFound (404, never 403) otherwise."""
        with self.read() as txn:
            return self._visible(txn, ctx, image_id)

    def visible_view(self, ctx: RequestContext, image_id: str) -> bytes:
        """The stored view JSON if ``ctx`` may see the image; NotFound (404) otherwise.

        One get (and a membership's for a shared image of another project); no record parsed.
        """
        with self.read() as txn:
            raw = cast(bytes | None, txn.get(image_id.encode(), db=self._views))
            if raw is None:
                raise NotFound(f"No image found with ID {image_id}")
            vis, owner, body = _split_view(raw)
            if ctx.is_admin or (owner is not None and owner == ctx.project_id) or vis in ("public", "community"):
                return body
            if vis == "shared" and self.member_status(txn, image_id, ctx.project_id) is not None:
                return body
        raise NotFound(f"No image found with ID {image_id}")

    def _modifiable(self, txn: lmdb.Transaction, ctx: RequestContext | None, image_id: str) -> dict[str, Any]:
        """The record for a write: with ``ctx``, visible (else NotFound) and modifiable (else Forbidden)."""
        if ctx is not None:
            record = self._visible(txn, ctx, image_id)
            if record.get("status") == "pending_delete":
                raise NotFound(f"Image {image_id} is deleted (pending_delete); it cannot be changed.")
            policy.check_modify(ctx, record)
            return record
        found = self.load(txn, image_id)
        if found is None:
            raise NotFound(f"No image found with ID {image_id}")
        return found

    def check_modify(self, ctx: RequestContext, record: dict[str, Any]) -> None:
        """Raise Forbidden unless ``ctx`` may change this image."""
        policy.check_modify(ctx, record)
