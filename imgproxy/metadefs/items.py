"""What a namespace holds: objects, properties, tags and resource type associations.

Each workflow is synchronous and runs in ONE transaction: the namespace's visibility, the
caller's right to write, ``protected``, duplicates and the write itself are checked and done
together, so two concurrent requests cannot both pass a check that only one may pass. Write
workflows begin a write transaction and so must run on the process's writer thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..context import RequestContext
from ..errors import Conflict, NotFound
from . import access, schemas
from .query import ListQuery, page
from .store import KINDS, MetadefStore, now

__all__ = ["Items", "new_object", "new_property", "new_tag", "new_association"]


# ---- records from validated bodies ------------------------------------------------------

def new_object(body: dict[str, Any], seq: int, stamp: str) -> dict[str, Any]:
    """An object record from a body that matched the object document."""
    name = schemas.check_name(body.get("name"), "object")
    props = body.get("properties")
    return {
        "name": name,
        "description": body.get("description"),
        "required": body.get("required"),
        "properties": None if props is None else {k: schemas.check_property_definition(k, v) for k, v in props.items()},
        "created_at": stamp,
        "updated_at": stamp,
        "_seq": seq,
    }


def new_property(name: Any, definition: dict[str, Any], seq: int) -> dict[str, Any]:
    checked = schemas.check_name(name, "property")
    return {"name": checked, "definition": schemas.check_property_definition(checked, definition), "_seq": seq}


def new_tag(name: Any, seq: int, stamp: str) -> dict[str, Any]:
    return {"name": schemas.check_name(name, "tag"), "created_at": stamp, "updated_at": stamp, "_seq": seq}


def new_association(body: dict[str, Any], seq: int, stamp: str) -> dict[str, Any]:
    return {
        "name": schemas.check_name(body.get("name"), "resource type"),
        "prefix": body.get("prefix"),
        "properties_target": body.get("properties_target"),
        "created_at": stamp,
        "updated_at": stamp,
        "_seq": seq,
    }


def duplicate(kind: str, name: str, namespace: str) -> Conflict:
    if kind == "a":
        return Conflict(
            f"The metadata definition resource-type association of resource-type={name} to namespace={namespace} "
            "already exists."
        )
    return Conflict(f"A metadata definition {KINDS[kind]} with name={name} already exists in namespace={namespace}.")


def missing(kind: str, name: str, namespace: str) -> NotFound:
    return NotFound(f"Metadata definition {KINDS[kind]}={name} was not found in namespace={namespace}.")


class Items:
    """The item workflows over one :class:`MetadefStore`."""

    def __init__(self, store: MetadefStore) -> None:
        self.store = store

    # ---- the shared steps --------------------------------------------------------------

    def _list(self, ctx: RequestContext, ns_name: str, kind: str) -> list[dict[str, Any]]:
        with self.store.read() as txn:
            access.visible_namespace(ctx, ns_name, self.store.namespace(txn, ns_name))
            return self.store.items(txn, kind, ns_name)

    def _page(self, ctx: RequestContext, ns_name: str, kind: str, query: ListQuery) -> list[dict[str, Any]]:
        """Sorted and paged; the marker is an item name (404 when the namespace has none such)."""
        records = self._list(ctx, ns_name, kind)
        marker = next((r for r in records if r["name"] == query.marker), None)
        if query.marker is not None and marker is None:
            raise missing(kind, query.marker, ns_name)
        return page(records, query, lambda r: str(r["name"]), marker)[0]

    def _show(self, ctx: RequestContext, ns_name: str, kind: str, name: str) -> dict[str, Any]:
        with self.store.read() as txn:
            access.visible_namespace(ctx, ns_name, self.store.namespace(txn, ns_name))
            record = self.store.item(txn, kind, ns_name, name)
        if record is None:
            raise missing(kind, name, ns_name)
        return record

    def _create(self, ctx: RequestContext, ns_name: str, kind: str, record: dict[str, Any]) -> dict[str, Any]:
        with self.store.write() as txn:
            access.writable_namespace(ctx, ns_name, self.store.namespace(txn, ns_name), f"add a metadata {KINDS[kind]}")
            if self.store.item(txn, kind, ns_name, record["name"]) is not None:
                raise duplicate(kind, record["name"], ns_name)
            if kind == "a":
                self.store.ensure_resource_type(txn, record["name"])
            self.store.put_item(txn, kind, ns_name, record)
        return record

    def _update(
        self, ctx: RequestContext, ns_name: str, kind: str, name: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any]:
        with self.store.write() as txn:
            access.writable_namespace(ctx, ns_name, self.store.namespace(txn, ns_name), f"change a metadata {KINDS[kind]}")
            old = self.store.item(txn, kind, ns_name, name)
            if old is None:
                raise missing(kind, name, ns_name)
            record = change(old)
            if record["name"] != name:
                if self.store.item(txn, kind, ns_name, record["name"]) is not None:
                    raise duplicate(kind, record["name"], ns_name)
                self.store.delete_item(txn, kind, ns_name, name)
            self.store.put_item(txn, kind, ns_name, record)
        return record

    def _delete(self, ctx: RequestContext, ns_name: str, kind: str, name: str, not_found: NotFound | None = None) -> None:
        with self.store.write() as txn:
            namespace = self.store.namespace(txn, ns_name)
            namespace = access.writable_namespace(ctx, ns_name, namespace, f"delete a metadata {KINDS[kind]}")
            if self.store.item(txn, kind, ns_name, name) is None:
                raise not_found or missing(kind, name, ns_name)
            access.check_deletable(namespace, KINDS[kind])
            self.store.delete_item(txn, kind, ns_name, name)

    # ---- objects -------------------------------------------------------------------------

    def list_objects(self, ctx: RequestContext, ns_name: str, query: ListQuery) -> list[dict[str, Any]]:
        return self._page(ctx, ns_name, "o", query)

    def show_object(self, ctx: RequestContext, ns_name: str, name: str) -> dict[str, Any]:
        return self._show(ctx, ns_name, "o", name)

    def create_object(self, ctx: RequestContext, ns_name: str, body: Any) -> dict[str, Any]:
        checked = schemas.check_body(body, "object", schemas.READ_ONLY_LINKED)
        for definition in (checked.get("properties") or {}).values():
            schemas.validate("object_property", definition, what="property")
        return self._create(ctx, ns_name, "o", new_object(checked, self.store.next_seq(), now()))

    def update_object(self, ctx: RequestContext, ns_name: str, name: str, body: Any) -> dict[str, Any]:
        checked = schemas.check_body(body, "object", schemas.READ_ONLY_LINKED)
        fresh = new_object(checked, 0, now())

        def change(old: dict[str, Any]) -> dict[str, Any]:
            # PUT replaces: what the body leaves out is cleared, as in Glance.
            return {**fresh, "created_at": old["created_at"], "_seq": old["_seq"]}

        return self._update(ctx, ns_name, "o", name, change)

    def delete_object(self, ctx: RequestContext, ns_name: str, name: str) -> None:
        self._delete(ctx, ns_name, "o", name)

    # ---- properties ----------------------------------------------------------------------

    def list_properties(self, ctx: RequestContext, ns_name: str) -> list[dict[str, Any]]:
        return self._list(ctx, ns_name, "p")

    def show_property(self, ctx: RequestContext, ns_name: str, name: str, resource_type: str | None) -> dict[str, Any]:
        """The property ``name``; with ``resource_type``, ``name`` carries that association's
        prefix, which is taken off (404 when it does not start with it)."""
        if resource_type:
            association = self._show(ctx, ns_name, "a", resource_type)
            prefix = association.get("prefix")
            if not prefix or not name.startswith(prefix):
                raise NotFound(
                    f"Property {name} does not start with the expected resource type association prefix of '{prefix}'."
                )
            name = name[len(prefix):]
        return self._show(ctx, ns_name, "p", name)

    def create_property(self, ctx: RequestContext, ns_name: str, body: Any) -> dict[str, Any]:
        checked = schemas.check_body(body, "property")
        return self._create(ctx, ns_name, "p", new_property(checked["name"], checked, self.store.next_seq()))

    def update_property(self, ctx: RequestContext, ns_name: str, name: str, body: Any) -> dict[str, Any]:
        checked = schemas.check_body(body, "property")
        fresh = new_property(checked["name"], checked, 0)
        return self._update(ctx, ns_name, "p", name, lambda old: {**fresh, "_seq": old["_seq"]})

    def delete_property(self, ctx: RequestContext, ns_name: str, name: str) -> None:
        self._delete(ctx, ns_name, "p", name)

    # ---- tags ----------------------------------------------------------------------------

    def list_tags(self, ctx: RequestContext, ns_name: str, query: ListQuery) -> list[dict[str, Any]]:
        return self._page(ctx, ns_name, "t", query)

    def show_tag(self, ctx: RequestContext, ns_name: str, name: str) -> dict[str, Any]:
        return self._show(ctx, ns_name, "t", name)

    def create_tag(self, ctx: RequestContext, ns_name: str, name: str) -> dict[str, Any]:
        schemas.validate("tag", {"name": name})
        return self._create(ctx, ns_name, "t", new_tag(name, self.store.next_seq(), now()))

    def create_tags(self, ctx: RequestContext, ns_name: str, body: Any, append: bool) -> list[dict[str, Any]]:
        """Several tags at once: they replace the namespace's tags, or with ``append`` join
        them. All or nothing: a name twice in the body, or (appending) one the namespace
        has, is 409 and changes nothing. An empty list changes nothing, as in Glance."""
        checked = schemas.check_body(body, "tags")
        stamp = now()
        records = [new_tag(t["name"], self.store.next_seq(), stamp) for t in checked["tags"]]
        seen: set[str] = set()
        with self.store.write() as txn:
            access.writable_namespace(ctx, ns_name, self.store.namespace(txn, ns_name), "add metadata tags")
            if not records:
                return []
            if not append:
                self.store.delete_items(txn, "t", ns_name)
            for record in records:
                if record["name"] in seen or self.store.item(txn, "t", ns_name, record["name"]) is not None:
                    raise duplicate("t", record["name"], ns_name)
                seen.add(record["name"])
                self.store.put_item(txn, "t", ns_name, record)
        return records

    def update_tag(self, ctx: RequestContext, ns_name: str, name: str, body: Any) -> dict[str, Any]:
        checked = schemas.check_body(body, "tag")
        new_name = schemas.check_name(checked["name"], "tag")
        return self._update(ctx, ns_name, "t", name, lambda old: {**old, "name": new_name, "updated_at": now()})

    def delete_tag(self, ctx: RequestContext, ns_name: str, name: str) -> None:
        self._delete(ctx, ns_name, "t", name)

    # ---- resource types and associations ---------------------------------------------------

    def list_resource_types(self, ctx: RequestContext) -> list[dict[str, Any]]:
        with self.store.read() as txn:
            return self.store.resource_types(txn)

    def list_associations(self, ctx: RequestContext, ns_name: str) -> list[dict[str, Any]]:
        return self._list(ctx, ns_name, "a")

    def create_association(self, ctx: RequestContext, ns_name: str, body: Any) -> dict[str, Any]:
        """Associate a resource type (created when new, as Glance does) with the namespace."""
        checked = schemas.check_body(body, "resource_type")
        return self._create(ctx, ns_name, "a", new_association(checked, self.store.next_seq(), now()))

    def delete_association(self, ctx: RequestContext, ns_name: str, name: str) -> None:
        """Remove the association; the resource type stays listed, as in Glance."""
        self._delete(ctx, ns_name, "a", name, NotFound(f"Failed to find resource type {name} to delete"))
