"""Namespace workflows: create (with what it holds), show, list, update, delete.

Synchronous, one transaction each (see :mod:`.items`); the writes begin a write
transaction and so run on the process's writer thread, the list scans off the event loop.
"""

from __future__ import annotations

from typing import Any

import lmdb

from ..context import RequestContext
from ..errors import Conflict, NotFound
from . import access, schemas
from .items import duplicate, new_association, new_object, new_property, new_tag
from .query import ListQuery, page
from .store import PLURALS, MetadefStore, now
from .views import NamespaceDetail, NamespacePage

__all__ = ["Namespaces", "namespace_records"]


def _namespace_record(body: dict[str, Any], owner: str | None, stamp: str, seq: int) -> dict[str, Any]:
    return {
        "namespace": schemas.check_name(body.get("namespace"), "namespace"),
        "display_name": body.get("display_name"),
        "description": body.get("description"),
        "visibility": body.get("visibility") or "private",
        "protected": bool(body.get("protected") or False),
        "owner": body.get("owner") or owner,
        "created_at": stamp,
        "updated_at": stamp,
        "_seq": seq,
    }


def namespace_records(
    store: MetadefStore, body: Any, owner: str | None
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """A namespace record and its items by kind, from a body in Glance's namespace format (the
    API's create body and a definition file alike). 400 for a body the namespace document
    refuses, 409 for a name twice in one list."""
    checked = schemas.check_body(body, "namespace", schemas.READ_ONLY_LINKED)
    stamp = now()
    record = _namespace_record(checked, owner, stamp, store.next_seq())
    items: dict[str, list[dict[str, Any]]] = {
        "a": [new_association(a, store.next_seq(), stamp) for a in checked.get("resource_type_associations") or ()],
        "p": [new_property(k, v, store.next_seq()) for k, v in (checked.get("properties") or {}).items()],
        "o": [new_object(o, store.next_seq(), stamp) for o in checked.get("objects") or ()],
        "t": [new_tag(t.get("name"), store.next_seq(), stamp) for t in checked.get("tags") or ()],
    }
    for kind, records in items.items():
        seen: set[str] = set()
        for item in records:
            if item["name"] in seen:
                raise duplicate(kind, item["name"], record["namespace"])
            seen.add(item["name"])
    return record, items


def put_items(store: MetadefStore, txn: lmdb.Transaction, namespace: str, items: dict[str, list[dict[str, Any]]]) -> None:
    for kind, records in items.items():
        for item in records:
            if kind == "a":
                store.ensure_resource_type(txn, item["name"])
            store.put_item(txn, kind, namespace, item)


def detail(store: MetadefStore, txn: lmdb.Transaction, namespace: dict[str, Any]) -> NamespaceDetail:
    """The namespace with its items: associations and properties oldest first, objects and
    tags newest first (Glance's default ``created_at desc``)."""
    name = str(namespace["namespace"])
    return NamespaceDetail(
        namespace=namespace,
        associations=store.items(txn, "a", name),
        properties=store.items(txn, "p", name),
        objects=store.items(txn, "o", name)[::-1],
        tags=store.items(txn, "t", name)[::-1],
    )


class Namespaces:
    """The namespace workflows over one :class:`MetadefStore`."""

    def __init__(self, store: MetadefStore) -> None:
        self.store = store

    def create(self, ctx: RequestContext, body: Any) -> NamespaceDetail:
        """A namespace with its associations, properties, objects and tags, all or nothing.
        ``owner`` defaults to the caller's project."""
        record, items = namespace_records(self.store, body, ctx.project_id)
        with self.store.write() as txn:
            access.check_admin(ctx, "create a metadata definition namespace")
            if self.store.namespace(txn, record["namespace"]) is not None:
                raise Conflict(f"Metadata definition namespace={record['namespace']} already exists.")
            self.store.put_namespace(txn, record)
            put_items(self.store, txn, record["namespace"], items)
            return detail(self.store, txn, record)

    def show(self, ctx: RequestContext, name: str, resource_type: str | None = None) -> NamespaceDetail:
        """The namespace with its items; with ``resource_type``, the prefix of that association
        goes on every property name (none when the namespace has no such association)."""
        with self.store.read() as txn:
            namespace = access.visible_namespace(ctx, name, self.store.namespace(txn, name))
            found = detail(self.store, txn, namespace)
        for association in found.associations:
            if resource_type and association["name"] == resource_type:
                found.prefix = association.get("prefix") or None
        return found

    def list(self, ctx: RequestContext, query: ListQuery) -> NamespacePage:
        """The namespaces the caller may see, filtered, sorted and paged; a scan of every
        namespace (and, for ``resource_types``, every association): run it off the event loop."""
        with self.store.read() as txn:
            visible = [ns for ns in self.store.namespaces(txn) if access.is_visible(ctx, ns)]
            marker = None
            if query.marker is not None:
                marker = next((ns for ns in visible if ns["namespace"] == query.marker), None)
                if marker is None:
                    raise NotFound(f"Metadata definition namespace={query.marker} was not found.")
            chosen = visible
            if query.visibility is not None:
                chosen = [ns for ns in chosen if (ns.get("visibility") or "private") == query.visibility]
            if query.resource_types:
                wanted = set(query.resource_types)
                names = {a["_namespace"] for a in self.store.items(txn, "a") if a["name"] in wanted}
                chosen = [ns for ns in chosen if ns["namespace"] in names]
            records, next_marker = page(chosen, query, lambda ns: str(ns["namespace"]), marker)
            details = [NamespaceDetail(ns, associations=self.store.items(txn, "a", ns["namespace"])) for ns in records]
            return NamespacePage(details, next_marker)

    def update(self, ctx: RequestContext, name: str, body: Any) -> dict[str, Any]:
        """Replace the namespace's own fields (what the body leaves out goes back to its default,
        as in Glance: visibility private, not protected, owner the caller's project); a new
        ``namespace`` renames it with everything in it. What it holds is not changed here."""
        checked = schemas.check_body(body, "namespace", schemas.READ_ONLY_LINKED)
        with self.store.write() as txn:
            old = access.writable_namespace(ctx, name, self.store.namespace(txn, name), "change a metadata namespace")
            record = _namespace_record(checked, ctx.project_id, now(), int(old["_seq"]))
            record["created_at"] = old["created_at"]
            if record["namespace"] == name:
                self.store.put_namespace(txn, record)
            elif self.store.namespace(txn, record["namespace"]) is not None:
                raise Conflict(
                    "Invalid update. It would result in a duplicate metadata definition namespace "
                    f"with the same name of {record['namespace']}"
                )
            else:
                self.store.rename_namespace(txn, name, record)
        return record

    def delete(self, ctx: RequestContext, name: str) -> None:
        """The namespace with everything in it; 403 while it is protected."""
        with self.store.write() as txn:
            namespace = access.writable_namespace(ctx, name, self.store.namespace(txn, name), "delete a metadata namespace")
            access.check_deletable(namespace, "namespace")
            self.store.delete_namespace(txn, name)

    def delete_content(self, ctx: RequestContext, name: str, kind: str) -> None:
        """Every object (``o``), property (``p``) or tag (``t``) of the namespace; 403 while it
        is protected (Glance checks the namespace delete rule here)."""
        with self.store.write() as txn:
            namespace = access.writable_namespace(ctx, name, self.store.namespace(txn, name), f"delete metadata {PLURALS[kind]}")
            access.check_deletable(namespace, PLURALS[kind])
            self.store.delete_items(txn, kind, name)
