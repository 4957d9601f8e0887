"""JSON views of metadata definitions, shaped as Glance renders them.

Fields that are unset are left out (Glance's models omit them), and nothing appears that the
``/v2/schemas/metadefs/...`` documents do not name: python-glanceclient validates every
answer against those documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

__all__ = [
    "NamespaceDetail", "NamespacePage", "namespace", "namespace_detail", "namespace_page", "object_",
    "objects", "property_", "properties", "tag", "tags", "association", "associations", "resource_types",
]

NAMESPACES = "/v2/metadefs/namespaces"


@dataclass
class NamespaceDetail:
    """A namespace with what is in it, each list in the order Glance shows it."""

    namespace: dict[str, Any]
    associations: list[dict[str, Any]] = field(default_factory=list)
    properties: list[dict[str, Any]] = field(default_factory=list)
    objects: list[dict[str, Any]] = field(default_factory=list)
    tags: list[dict[str, Any]] = field(default_factory=list)
    prefix: str | None = None  # the prefix of the association ``?resource_type=`` named



@dataclass
class NamespacePage:
    """One page of the namespace list; ``next_marker`` is set when a next page may exist."""

    items: list[NamespaceDetail]
    next_marker: str | None


def _set(out: dict[str, Any], record: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if record.get(key) is not None:
            out[key] = record[key]


def _links(out: dict[str, Any], self_href: str, schema: str) -> dict[str, Any]:
    out["self"] = self_href
    out["schema"] = schema
    return out


def _base(ns: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"namespace": ns["namespace"]}
    _set(out, ns, "display_name", "description")
    out["visibility"] = ns.get("visibility") or "private"
    out["protected"] = bool(ns.get("protected"))
    _set(out, ns, "owner", "created_at", "updated_at")
    return out


def namespace(ns: dict[str, Any]) -> dict[str, Any]:
    """A namespace alone (the answer to create and update)."""
    return _links(_base(ns), f"{NAMESPACES}/{ns['namespace']}", "/v2/schemas/metadefs/namespace")


def _prefixed(prefix: str | None, name: str) -> str:
    return f"{prefix}{name}" if prefix else name


def namespace_detail(detail: NamespaceDetail) -> dict[str, Any]:
    """A namespace with its associations, properties, objects and tags; with ``detail.prefix``
    on every property name."""
    ns, prefix = detail.namespace, detail.prefix
    out = _base(ns)
    if detail.associations:
        out["resource_type_associations"] = [association(a) for a in detail.associations]
    if detail.properties:
        out["properties"] = {_prefixed(prefix, p["name"]): dict(p["definition"]) for p in detail.properties}
    if detail.objects:
        out["objects"] = [object_(ns["namespace"], o, prefix) for o in detail.objects]
    if detail.tags:
        out["tags"] = [{"name": t["name"]} for t in detail.tags]
    return _links(out, f"{NAMESPACES}/{ns['namespace']}", "/v2/schemas/metadefs/namespace")


def namespace_page(page: NamespacePage, query: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The list answer: ``first`` repeats the query without its marker, ``next`` adds the last
    name as the marker (repeated parameters are kept, unlike Glance's links)."""
    params = [(k, v) for k, v in query if k != "marker"]
    first = f"{NAMESPACES}?{urlencode(params)}" if params else NAMESPACES
    out: dict[str, Any] = {"namespaces": [], "first": first, "schema": "/v2/schemas/metadefs/namespaces"}
    for detail in page.items:
        item = _base(detail.namespace)
        if detail.associations:
            item["resource_type_associations"] = [association(a) for a in detail.associations]
        out["namespaces"].append(_links(item, f"{NAMESPACES}/{detail.namespace['namespace']}", "/v2/schemas/metadefs/namespace"))
    if page.next_marker is not None:
        out["next"] = f"{NAMESPACES}?{urlencode([*params, ('marker', page.next_marker)])}"
    return out


def object_(namespace_name: str, obj: dict[str, Any], prefix: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": obj["name"]}
    if obj.get("required") is not None:
        out["required"] = [_prefixed(prefix, r) for r in obj["required"]]
    _set(out, obj, "description")
    if obj.get("properties") is not None:
        out["properties"] = {_prefixed(prefix, k): v for k, v in obj["properties"].items()}
    _set(out, obj, "created_at", "updated_at")
    return _links(out, f"{NAMESPACES}/{namespace_name}/objects/{obj['name']}", "/v2/schemas/metadefs/object")


def objects(namespace_name: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    # Glance answers "v2/schemas/metadefs/objects", a link relative to the wrong base; this
    # one is absolute like every other schema link.
    return {"objects": [object_(namespace_name, o) for o in records], "schema": "/v2/schemas/metadefs/objects"}


def property_(prop: dict[str, Any]) -> dict[str, Any]:
    return {"name": prop["name"], **prop["definition"]}


def properties(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"properties": {p["name"]: dict(p["definition"]) for p in records}}


def tag(record: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": record["name"]}
    _set(out, record, "created_at", "updated_at")
    return out


def tags(records: list[dict[str, Any]]) -> dict[str, Any]:
    """A tag list (names only, as Glance lists them)."""
    return {"tags": [{"name": t["name"]} for t in records]}


def association(record: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": record["name"]}
    _set(out, record, "prefix", "properties_target", "created_at", "updated_at")
    return out


def associations(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resource_type_associations": [association(a) for a in records]}


def resource_types(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resource_types": [{"name": r["name"], "created_at": r["created_at"], "updated_at": r["updated_at"]} for r in records]}
