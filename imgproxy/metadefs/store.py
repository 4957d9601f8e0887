"""Metadata definitions in LMDB: three named databases of the service's one environment.

- ``md_namespaces``: namespace name -> namespace record.
- ``md_items``: ``<kind>\\0<namespace>\\0<name>`` -> record, for the namespace's objects
  (kind ``o``), properties (``p``), tags (``t``) and resource type associations (``a``).
  Kind first, then namespace, so one namespace's items of one kind are one prefix scan and
  all associations (the ``resource_types`` filter) are another. Names never hold ``\\0``
  (:func:`schemas.check_name`), so keys cannot collide.
- ``md_resource_types``: resource type name -> record.

Records are JSON; ``_seq`` (creation order, nanoseconds, strictly increasing per process)
breaks ties as Glance's row ids do. Write methods take the caller's write transaction, so a
workflow's checks and its writes commit together; the caller begins it with
:func:`cache.txn.write_txn`, never on the event loop.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, cast

import lmdb

from cache.txn import write_txn

__all__ = ["MetadefStore", "KINDS", "PLURALS", "now"]

# Item kinds and what they are called in messages.
KINDS = {"o": "object", "p": "property", "t": "tag", "a": "resource type association"}
PLURALS = {"o": "objects", "p": "properties", "t": "tags", "a": "resource type associations"}


def now() -> str:
    """The current time as Glance shows it (``2024-01-31T12:00:00Z``)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dumps(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()


def _loads(raw: bytes | memoryview) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(bytes(raw)))


def _prefix(kind: str, namespace: str | None = None) -> bytes:
    return f"{kind}\0".encode() if namespace is None else f"{kind}\0{namespace}\0".encode()


def _item_key(kind: str, namespace: str, name: str) -> bytes:
    return f"{kind}\0{namespace}\0{name}".encode()


class MetadefStore:
    """The metadata definitions' records; see the module docstring for the layout.

    Thread-safe as LMDB is. Reads take a read transaction from :meth:`read`; writes take a
    write transaction from :meth:`write` (refused on an event-loop thread).
    """

    def __init__(self, env: lmdb.Environment) -> None:
        self.env = env
        self._namespaces = env.open_db(b"md_namespaces")
        self._items = env.open_db(b"md_items")
        self._types = env.open_db(b"md_resource_types")
        self._seq_lock = threading.Lock()
        self._last_seq = 0

    # ---- transactions ---------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        with self.env.begin(write=False, buffers=False) as txn:
            yield txn

    @contextmanager
    def write(self) -> Iterator[lmdb.Transaction]:
        """One write transaction: committed when the block ends, aborted when it raises."""
        with write_txn(self.env) as txn:
            yield txn

    def next_seq(self) -> int:
        """A creation-order number larger than every one this process handed out before."""
        with self._seq_lock:
            self._last_seq = max(time.time_ns(), self._last_seq + 1)
            return self._last_seq

    # ---- namespaces -----------------------------------------------------------------

    def namespace(self, txn: lmdb.Transaction, name: str) -> dict[str, Any] | None:
        raw = txn.get(name.encode(), db=self._namespaces)
        return None if raw is None else _loads(raw)

    def namespaces(self, txn: lmdb.Transaction) -> list[dict[str, Any]]:
        """Every namespace (a scan: call it off the event loop)."""
        return [_loads(raw) for _, raw in txn.cursor(db=self._namespaces)]

    def put_namespace(self, txn: lmdb.Transaction, record: dict[str, Any]) -> None:
        txn.put(str(record["namespace"]).encode(), _dumps(record), db=self._namespaces)

    def delete_namespace(self, txn: lmdb.Transaction, name: str) -> None:
        """The namespace and everything in it."""
        for kind in KINDS:
            self.delete_items(txn, kind, name)
        txn.delete(name.encode(), db=self._namespaces)

    def rename_namespace(self, txn: lmdb.Transaction, old: str, record: dict[str, Any]) -> None:
        """Store ``record`` under its (new) name and move every item of ``old`` with it."""
        new = str(record["namespace"])
        for kind in KINDS:
            for item in self.items(txn, kind, old):
                self.put_item(txn, kind, new, item)
            self.delete_items(txn, kind, old)
        txn.delete(old.encode(), db=self._namespaces)
        self.put_namespace(txn, record)

    # ---- items of a namespace -------------------------------------------------------

    def item(self, txn: lmdb.Transaction, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        raw = txn.get(_item_key(kind, namespace, name), db=self._items)
        return None if raw is None else _loads(raw)

    def items(self, txn: lmdb.Transaction, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """The items of one kind in ``namespace`` (every namespace when None), in creation order."""
        prefix = _prefix(kind, namespace)
        found: list[dict[str, Any]] = []
        cursor = txn.cursor(db=self._items)
        if cursor.set_range(prefix):
            for raw_key, raw in cursor:
                key = bytes(raw_key)
                if not key.startswith(prefix):
                    break
                record = _loads(raw)
                if namespace is None:
                    record["_namespace"] = key[len(prefix):].split(b"\0", 1)[0].decode()
                found.append(record)
        found.sort(key=lambda r: int(r.get("_seq", 0)))
        return found

    def put_item(self, txn: lmdb.Transaction, kind: str, namespace: str, record: dict[str, Any]) -> None:
        record.pop("_namespace", None)
        txn.put(_item_key(kind, namespace, str(record["name"])), _dumps(record), db=self._items)

    def delete_item(self, txn: lmdb.Transaction, kind: str, namespace: str, name: str) -> bool:
        return bool(txn.delete(_item_key(kind, namespace, name), db=self._items))

    def delete_items(self, txn: lmdb.Transaction, kind: str, namespace: str) -> int:
        prefix = _prefix(kind, namespace)
        cursor = txn.cursor(db=self._items)
        removed = 0
        if cursor.set_range(prefix):
            while bytes(cursor.key()).startswith(prefix):
                removed += 1
                if not cursor.delete():
                    break
        return removed

    # ---- resource types -------------------------------------------------------------

    def resource_types(self, txn: lmdb.Transaction) -> list[dict[str, Any]]:
        found = [_loads(raw) for _, raw in txn.cursor(db=self._types)]
        found.sort(key=lambda r: int(r.get("_seq", 0)))
        return found

    def ensure_resource_type(self, txn: lmdb.Transaction, name: str, *, protected: bool = False) -> dict[str, Any]:
        """The resource type ``name``, created when missing (as Glance does on a first association)."""
        raw = txn.get(name.encode(), db=self._types)
        if raw is not None:
            return _loads(raw)
        stamp = now()
        record = {"name": name, "protected": protected, "created_at": stamp, "updated_at": stamp, "_seq": self.next_seq()}
        txn.put(name.encode(), _dumps(record), db=self._types)
        return record
