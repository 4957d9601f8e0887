"""The metadata definitions' JSON schema documents (``/v2/schemas/metadefs/...``) and request validation.

The documents are Glance's, key for key: python-glanceclient builds its ``md-*`` models from
them and validates every answer against them (``additionalProperties: false``), so a field
the documents do not name must never appear in an answer. Request bodies are validated
against the same documents, as Glance does, plus the few rules its documents leave out
(names that a URL can address, known keys in property definitions).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from jsonschema.exceptions import best_match  # type: ignore[import-untyped]

from ..errors import BadRequest, Forbidden

__all__ = [
    "SCHEMAS", "PROPERTY_KEYS", "READ_ONLY_LINKED", "check_body", "check_name", "check_property_definition", "validate",
]

_TYPES = ["array", "boolean", "integer", "number", "object", "string", None]

# The keys a property definition may hold, in the order Glance renders them (its PropertyType).
PROPERTY_KEYS = (
    "name", "type", "title", "description", "operators", "default", "readonly", "minimum", "maximum",
    "enum", "pattern", "minLength", "maxLength", "confidential", "items", "uniqueItems", "minItems",
    "maxItems", "additionalItems",
)

_READ_ONLY_TIMES = ("created_at", "updated_at")
# Namespaces and objects also refuse their links in a body (Glance: 403 "Attribute 'self' is read-only.").
READ_ONLY_LINKED = ("self", "schema", "created_at", "updated_at")


def _time(description: str) -> dict[str, Any]:
    return {"type": "string", "readOnly": True, "description": description, "format": "date-time"}


def _links() -> dict[str, Any]:
    return {"schema": {"readOnly": True, "type": "string"}, "self": {"readOnly": True, "type": "string"}}


def _property_fields() -> dict[str, Any]:
    """The fields of one property definition."""
    return {
        "name": {"type": "string", "maxLength": 80},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "operators": {"type": "array", "items": {"type": "string"}},
        "type": {"type": "string", "enum": list(_TYPES)},
        "required": {"$ref": "#/definitions/stringArray"},
        "minimum": {"type": "number"},
        "maximum": {"type": "number"},
        "maxLength": {"$ref": "#/definitions/positiveInteger"},
        "minLength": {"$ref": "#/definitions/positiveIntegerDefault0"},
        "pattern": {"type": "string", "format": "regex"},
        "enum": {"type": "array"},
        "readonly": {"type": "boolean"},
        "default": {},
        "items": {
            "type": "object",
            "properties": {"type": {"type": "string", "enum": list(_TYPES)}, "enum": {"type": "array"}},
        },
        "maxItems": {"$ref": "#/definitions/positiveInteger"},
        "minItems": {"$ref": "#/definitions/positiveIntegerDefault0"},
        "uniqueItems": {"type": "boolean", "default": False},
        "additionalItems": {"type": "boolean"},
    }


def _definitions(*, with_property: bool) -> dict[str, Any]:
    """The shared ``definitions``: with the property map (namespace, object), or the property
    document's own (whose string arrays need an item)."""
    definitions: dict[str, Any] = {
        "positiveInteger": {"type": "integer", "minimum": 0},
        "positiveIntegerDefault0": {"allOf": [{"$ref": "#/definitions/positiveInteger"}, {"default": 0}]},
        "stringArray": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
    }
    if with_property:
        definitions["property"] = {
            "type": "object",
            "additionalProperties": {"type": "object", "required": ["title", "type"], "properties": _property_fields()},
        }
    else:
        definitions["stringArray"] = {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": True}
    return definitions


def _document(name: str, fields: dict[str, Any], required: list[str], definitions: dict[str, Any] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": name, "properties": fields, "additionalProperties": False}
    if definitions:
        doc["definitions"] = definitions
    if required:
        doc["required"] = required
    return doc


def _collection(name: str, item: dict[str, Any], *, keyed: bool = False) -> dict[str, Any]:
    """A list document: the item's definitions move to the top, as in Glance's collections."""
    item = dict(item)
    definitions = item.pop("definitions", None)
    container = {"type": "object", "additionalProperties": item} if keyed else {"type": "array", "items": item}
    doc: dict[str, Any] = {
        "name": name,
        "properties": {name: container, "first": {"type": "string"}, "next": {"type": "string"}, "schema": {"type": "string"}},
        "links": [
            {"rel": "first", "href": "{first}"},
            {"rel": "next", "href": "{next}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    }
    if definitions:
        doc["definitions"] = definitions
    return doc


def namespace_schema() -> dict[str, Any]:
    fields = {
        "namespace": {"type": "string", "description": "The unique namespace text.", "maxLength": 80},
        "display_name": {
            "type": "string", "maxLength": 80,
            "description": "The user friendly name for the namespace. Used by UI if available.",
        },
        "description": {
            "type": "string", "maxLength": 500, "description": "Provides a user friendly description of the namespace.",
        },
        "visibility": {"type": "string", "description": "Scope of namespace accessibility.", "enum": ["public", "private"]},
        "protected": {"type": "boolean", "description": "If true, namespace will not be deletable."},
        "owner": {"type": "string", "description": "Owner of the namespace.", "maxLength": 255},
        "created_at": _time("Date and time of namespace creation"),
        "updated_at": _time("Date and time of the last namespace modification"),
        **_links(),
        "resource_type_associations": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "prefix": {"type": "string"}, "properties_target": {"type": "string"}},
            },
        },
        "properties": {"$ref": "#/definitions/property"},
        "objects": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "description": {"type": "string"},
                    "required": {"$ref": "#/definitions/stringArray"},
                    "properties": {"$ref": "#/definitions/property"},
                },
            },
        },
        "tags": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
    }
    return _document("namespace", fields, ["namespace"], _definitions(with_property=True))


def object_schema() -> dict[str, Any]:
    fields = {
        "name": {"type": "string", "maxLength": 80},
        "description": {"type": "string"},
        "required": {"$ref": "#/definitions/stringArray"},
        "properties": {"$ref": "#/definitions/property"},
        **_links(),
        "created_at": _time("Date and time of object creation"),
        "updated_at": _time("Date and time of the last object modification"),
    }
    return _document("object", fields, ["name"], _definitions(with_property=True))


def property_schema(*, require_name: bool = True) -> dict[str, Any]:
    required = ["type", "title", "name"] if require_name else ["type", "title"]
    return _document("property", _property_fields(), required, _definitions(with_property=False))


def tag_schema() -> dict[str, Any]:
    fields = {
        "name": {"type": "string", "maxLength": 80},
        "created_at": _time("Date and time of tag creation"),
        "updated_at": _time("Date and time of the last tag modification"),
    }
    return _document("tag", fields, ["name"], None)


def tags_request_schema() -> dict[str, Any]:
    """The body of a bulk tag create (not served: Glance validates with it but publishes ``tags``)."""
    item = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"], "additionalProperties": False}
    return _document("tags", {"tags": {"type": "array", "items": item}}, [], None)


def resource_type_schema() -> dict[str, Any]:
    fields = {
        "name": {
            "type": "string", "maxLength": 80,
            "description": "Resource type names should be aligned with Heat resource types whenever possible: "
            "https://docs.openstack.org/heat/latest/template_guide/openstack.html",
        },
        "prefix": {
            "type": "string", "maxLength": 80,
            "description": "Specifies the prefix to use for the given resource type. Any properties in the namespace "
            "should be prefixed with this prefix when being applied to the specified resource type. Must include "
            "prefix separator (e.g. a colon :).",
        },
        "properties_target": {
            "type": "string", "maxLength": 80,
            "description": "Some resource types allow more than one key / value pair per instance.  For example, "
            "Cinder allows user and image metadata on volumes. Only the image properties metadata is evaluated by "
            "Nova (scheduling or drivers). This property allows a namespace target to remove the ambiguity.",
        },
        "created_at": _time("Date and time of resource type association"),
        "updated_at": _time("Date and time of the last resource type association modification"),
    }
    return _document("resource_type_association", fields, ["name"], None)


# The documents under /v2/schemas/metadefs/<name>.
SCHEMAS: dict[str, Callable[[], dict[str, Any]]] = {
    "namespace": namespace_schema,
    "namespaces": lambda: _collection("namespaces", namespace_schema()),
    "object": object_schema,
    "objects": lambda: _collection("objects", object_schema()),
    "property": property_schema,
    "properties": lambda: _collection("properties", property_schema(require_name=False), keyed=True),
    "tag": tag_schema,
    "tags": lambda: _collection("tags", tag_schema()),
    "resource_type": resource_type_schema,
    "resource_types": lambda: _collection("resource_type_associations", resource_type_schema()),
}

_REQUEST_SCHEMAS: dict[str, Callable[[], dict[str, Any]]] = {
    "namespace": namespace_schema,
    "object": object_schema,
    "property": property_schema,
    "object_property": lambda: property_schema(require_name=False),
    "tag": tag_schema,
    "tags": tags_request_schema,
    "resource_type": resource_type_schema,
}


@functools.cache
def _validator(kind: str) -> Draft202012Validator:
    return Draft202012Validator(_REQUEST_SCHEMAS[kind]())


def validate(kind: str, body: Any, *, what: str | None = None) -> None:
    """Raise BadRequest unless ``body`` matches the ``kind`` document (Glance validates the same way)."""
    validator = _validator(kind)
    error = best_match(validator.iter_errors(body))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        at = f" (at {where})" if where else ""
        raise BadRequest(f"Provided object does not match schema '{what or validator.schema['name']}': {error.message}{at}")


def check_body(body: Any, kind: str, read_only: tuple[str, ...] = _READ_ONLY_TIMES) -> dict[str, Any]:
    """A request body of ``kind``: an object (400), without read-only fields (403, as Glance),
    valid against the document (400)."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    for key in read_only:
        if key in body:
            raise Forbidden(f"Attribute '{key}' is read-only.")
    validate(kind, body)
    return body


def check_name(value: Any, what: str, limit: int = 80) -> str:
    """A name that a URL path can address: 1..limit characters, no ``/``, no control characters.

    Glance accepts ``""`` and ``"a/b"`` and then cannot address what it stored; such names are 400 here.
    """
    if not isinstance(value, str) or not value:
        raise BadRequest(f"The {what} name must be a non-empty string.")
    if len(value) > limit:
        raise BadRequest(f"The {what} name is longer than {limit} characters.")
    if "/" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise BadRequest(f"The {what} name {value!r} may not contain '/' or control characters.")
    return value


def check_property_definition(name: str, definition: Mapping[str, Any]) -> dict[str, Any]:
    """One property definition, keys in Glance's order and without ``name`` (the key names it).

    Unknown keys are 400: Glance's documents let them through nested maps, then fail to read them.
    """
    check_name(name, "property")
    unknown = sorted(set(definition) - set(PROPERTY_KEYS))
    if unknown:
        raise BadRequest(f"Property {name!r} has unknown attributes: {', '.join(unknown)}.")
    items = definition.get("items")
    if isinstance(items, dict) and set(items) - {"type", "enum"}:
        raise BadRequest(f"The items of property {name!r} may only have 'type' and 'enum'.")
    return {key: definition[key] for key in PROPERTY_KEYS if key in definition and key != "name"}
