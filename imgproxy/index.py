"""The registry's index in LMDB: the ``idx`` database holding the keys of :mod:`imgproxy.streams`.

A key's value is empty: the key says it all. A created-order stream is walked newest first
(the default list order); a name-order stream (:func:`imgproxy.streams.name_stream`) is walked
by name, ascending or descending, each name's images newest first (Glance's tie-breakers,
``created_at`` then ``id``, both descending, whatever the name's direction).

Every method runs inside the caller's transaction (begun with ``buffers=False``: keys are
``bytes``) and yields keys only while that transaction is open.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice, takewhile
from operator import methodcaller
from typing import cast

import lmdb

from .streams import ORDER_TS, name_end, split_name

__all__ = ["Index", "in_list_order"]


def _successor(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (None: no such key)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _reverse_groups(suffixes: Iterable[bytes]) -> Iterator[bytes]:
    """Name-order suffixes ascending (name, then order) as name ascending, order descending:
    each run of one name is yielded reversed (it is held in memory: runs are short, except
    when very many images share one name)."""
    group: list[bytes] = []
    name = b""
    for suffix in suffixes:
        key = suffix[:name_end(suffix)]
        if key != name:
            yield from reversed(group)
            group, name = [], key
        group.append(suffix)
    yield from reversed(group)


class Index:
    """The ``idx`` database of one environment. Thread-safe as LMDB is."""

    def __init__(self, env: lmdb.Environment) -> None:
        self.db = env.open_db(b"idx")

    def reindex(self, txn: lmdb.Transaction, old_keys: set[bytes], new_keys: set[bytes]) -> None:
        """In a write transaction: remove the keys no longer held, add the new ones."""
        for key in old_keys - new_keys:
            txn.delete(key, db=self.db)
        for key in new_keys - old_keys:
            txn.put(key, b"", db=self.db)

    def has(self, txn: lmdb.Transaction, key: bytes) -> bool:
        """Whether the index holds ``key`` (a stream prefix and an order)."""
        return txn.get(key, db=self.db) is not None

    def _descending(self, txn: lmdb.Transaction, prefix: bytes, before: bytes | None) -> Iterator[bytes]:
        """Keys of one stream, greatest first (strictly below ``prefix + before`` when given)."""
        cursor = txn.cursor(db=self.db)
        start = prefix + before if before is not None else _successor(prefix)
        if start is None or not cursor.set_range(start):
            if not cursor.last():
                return iter(())
        elif cast(bytes, cursor.key()) >= start:
            if not cursor.prev():
                return iter(())
        # C-level iteration: a page of a stream costs no Python per key but the slice.
        keys = cast(Iterator[bytes], cursor.iterprev(keys=True, values=False))
        return takewhile(methodcaller("startswith", prefix), keys)

    def _ascending(self, txn: lmdb.Transaction, prefix: bytes, start: bytes) -> Iterator[bytes]:
        """Keys of one stream from ``prefix + start`` on, least first."""
        cursor = txn.cursor(db=self.db)
        if not cursor.set_range(prefix + start):
            return iter(())
        keys = cast(Iterator[bytes], cursor.iternext(keys=True, values=False))
        return takewhile(methodcaller("startswith", prefix), keys)

    def walk(self, txn: lmdb.Transaction, prefix: bytes, before: bytes | None = None) -> Iterator[tuple[bytes, str]]:
        """Yield ``(order, image_id)`` of one created-order stream, newest first.

        ``order`` is ``<created_us BE><id>``; with ``before``, start strictly after it in
        descending order (the marker's position).
        """
        plen = len(prefix)
        for key in self._descending(txn, prefix, before):
            order = key[plen:]
            yield order, order[ORDER_TS:].decode()

    def newest(self, txn: lmdb.Transaction, prefix: bytes, before: bytes | None, n: int) -> list[bytes]:
        """The orders of the first ``n`` images of a stream (as :meth:`walk`, at once)."""
        plen = len(prefix)
        return [key[plen:] for key in islice(self._descending(txn, prefix, before), n)]

    def by_name(self, txn: lmdb.Transaction, prefix: bytes, *, descending: bool,
                after: bytes | None = None) -> Iterator[bytes]:
        """The suffixes (``<name key><order>``, :func:`imgproxy.streams.split_name`) of one
        name-order stream, in key order or ``descending``: with ``after`` (the marker's
        suffix), those :func:`in_list_order` may keep (descending: strictly below it;
        ascending: from the marker's name on). Streams so walked merge by plain comparison."""
        plen = len(prefix)
        if descending:
            return (key[plen:] for key in self._descending(txn, prefix, after))
        start = split_name(after)[0] if after is not None else b""
        return (key[plen:] for key in self._ascending(txn, prefix, start))


def in_list_order(suffixes: Iterable[bytes], *, descending: bool, after: bytes | None = None) -> Iterator[bytes]:
    """Name-order suffixes as :meth:`Index.by_name` walked them, in list order: names ascending
    or descending, each name's images newest first; with ``after``, strictly after it."""
    if descending:
        return iter(suffixes)  # descending keys: names descending, newest first
    ordered = _reverse_groups(suffixes)
    if after is None:
        return ordered
    # The marker's own name: only its images older than the marker remain.
    name, order = split_name(after)
    return (s for s in ordered if s[:len(name)] != name or split_name(s)[1] < order)
