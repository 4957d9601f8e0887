"""Metadata definitions routes (``/v2/metadefs/...``) and their schemas (``/v2/schemas/metadefs/...``).

Each route parses, calls one method of :class:`imgproxy.metadefs.Metadefs` and renders; the
rules (visibility, admin-only writes, protected namespaces) live there.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..errors import NotFound
from ..metadefs import SCHEMAS, Metadefs, views
from ..metadefs.query import ITEM_SORT_KEYS, NAMESPACE_SORT_KEYS, DEFAULT_LIMIT, parse_query
from .common import caller, json_response, read_json, service_of

__all__ = ["routes"]

_TRUE = frozenset({"1", "t", "true", "on", "y", "yes"})  # oslo's bool_from_string


def _md(request: Request) -> Metadefs:
    metadefs: Metadefs = service_of(request).metadefs
    return metadefs


def _ns(request: Request) -> str:
    return str(request.path_params["namespace"])


def _name(request: Request) -> str:
    return str(request.path_params["name"])


async def _body(request: Request) -> object:
    return await read_json(request, service_of(request).settings.max_json_body)


def _no_content() -> Response:
    return Response(status_code=204)


# ---- namespaces ------------------------------------------------------------------------------

async def list_namespaces(request: Request) -> Response:
    query = parse_query(request.query_params, sort_keys=NAMESPACE_SORT_KEYS, default_limit=DEFAULT_LIMIT, filters=True)
    found = await _md(request).list_namespaces(caller(request), query)
    return json_response(views.namespace_page(found, request.query_params.multi_items()))


async def create_namespace(request: Request) -> Response:
    created = await _md(request).create_namespace(caller(request), await _body(request))
    location = str(request.base_url).rstrip("/") + f"{views.NAMESPACES}/{created.namespace['namespace']}"
    return json_response(views.namespace_detail(created), 201, {"Location": location})


async def show_namespace(request: Request) -> Response:
    found = await _md(request).show_namespace(caller(request), _ns(request), request.query_params.get("resource_type"))
    return json_response(views.namespace_detail(found))


async def update_namespace(request: Request) -> Response:
    updated = await _md(request).update_namespace(caller(request), _ns(request), await _body(request))
    return json_response(views.namespace(updated))


async def delete_namespace(request: Request) -> Response:
    await _md(request).delete_namespace(caller(request), _ns(request))
    return _no_content()


def _delete_all(kind: str, collection: str) -> Route:
    """``DELETE /v2/metadefs/namespaces/{namespace}/<collection>``: every item of one kind."""

    async def endpoint(request: Request) -> Response:
        await _md(request).delete_content(caller(request), _ns(request), kind)
        return _no_content()

    return Route(f"/v2/metadefs/namespaces/{{namespace}}/{collection}", endpoint, methods=["DELETE"])


# ---- objects ---------------------------------------------------------------------------------

async def list_objects(request: Request) -> Response:
    query = parse_query(request.query_params, sort_keys=ITEM_SORT_KEYS, default_limit=None, filters=False)
    found = await _md(request).list_objects(caller(request), _ns(request), query)
    return json_response(views.objects(_ns(request), found))


async def create_object(request: Request) -> Response:
    created = await _md(request).create_object(caller(request), _ns(request), await _body(request))
    return json_response(views.object_(_ns(request), created), 201)


async def show_object(request: Request) -> Response:
    found = _md(request).show_object(caller(request), _ns(request), _name(request))
    return json_response(views.object_(_ns(request), found))


async def update_object(request: Request) -> Response:
    updated = await _md(request).update_object(caller(request), _ns(request), _name(request), await _body(request))
    return json_response(views.object_(_ns(request), updated))


async def delete_object(request: Request) -> Response:
    await _md(request).delete_object(caller(request), _ns(request), _name(request))
    return _no_content()


# ---- properties ------------------------------------------------------------------------------

async def list_properties(request: Request) -> Response:
    return json_response(views.properties(await _md(request).list_properties(caller(request), _ns(request))))


async def create_property(request: Request) -> Response:
    created = await _md(request).create_property(caller(request), _ns(request), await _body(request))
    return json_response(views.property_(created), 201)


async def show_property(request: Request) -> Response:
    resource_type = request.query_params.get("resource_type")
    found = _md(request).show_property(caller(request), _ns(request), _name(request), resource_type)
    return json_response(views.property_(found))


async def update_property(request: Request) -> Response:
    updated = await _md(request).update_property(caller(request), _ns(request), _name(request), await _body(request))
    return json_response(views.property_(updated))


async def delete_property(request: Request) -> Response:
    await _md(request).delete_property(caller(request), _ns(request), _name(request))
    return _no_content()


# ---- tags ------------------------------------------------------------------------------------

async def list_tags(request: Request) -> Response:
    query = parse_query(request.query_params, sort_keys=ITEM_SORT_KEYS, default_limit=None, filters=False)
    return json_response(views.tags(await _md(request).list_tags(caller(request), _ns(request), query)))


async def create_tags(request: Request) -> Response:
    append = request.headers.get("x-openstack-append", "").strip().lower() in _TRUE
    created = await _md(request).create_tags(caller(request), _ns(request), await _body(request), append)
    return json_response(views.tags(created), 201)


async def create_tag(request: Request) -> Response:
    created = await _md(request).create_tag(caller(request), _ns(request), _name(request))
    return json_response(views.tag(created), 201)


async def show_tag(request: Request) -> Response:
    return json_response(views.tag(_md(request).show_tag(caller(request), _ns(request), _name(request))))


async def update_tag(request: Request) -> Response:
    updated = await _md(request).update_tag(caller(request), _ns(request), _name(request), await _body(request))
    return json_response(views.tag(updated))


async def delete_tag(request: Request) -> Response:
    await _md(request).delete_tag(caller(request), _ns(request), _name(request))
    return _no_content()


# ---- resource types --------------------------------------------------------------------------

async def list_resource_types(request: Request) -> Response:
    return json_response(views.resource_types(await _md(request).list_resource_types(caller(request))))


async def list_associations(request: Request) -> Response:
    return json_response(views.associations(await _md(request).list_associations(caller(request), _ns(request))))


async def create_association(request: Request) -> Response:
    created = await _md(request).create_association(caller(request), _ns(request), await _body(request))
    return json_response(views.association(created), 201)


async def delete_association(request: Request) -> Response:
    await _md(request).delete_association(caller(request), _ns(request), _name(request))
    return _no_content()


# ---- schemas ---------------------------------------------------------------------------------

async def show_schema(request: Request) -> Response:
    build = SCHEMAS.get(_name(request))
    if build is None:
        raise NotFound(f"No schema /v2/schemas/metadefs/{_name(request)}")
    return json_response(build())


_NS = "/v2/metadefs/namespaces/{namespace}"

routes: list[BaseRoute] = [
    Route("/v2/schemas/metadefs/{name}", show_schema, methods=["GET"]),
    Route("/v2/metadefs/resource_types", list_resource_types, methods=["GET"]),
    Route("/v2/metadefs/namespaces", list_namespaces, methods=["GET"]),
    Route("/v2/metadefs/namespaces", create_namespace, methods=["POST"]),
    Route(_NS, show_namespace, methods=["GET"]),
    Route(_NS, update_namespace, methods=["PUT"]),
    Route(_NS, delete_namespace, methods=["DELETE"]),
    Route(f"{_NS}/objects", list_objects, methods=["GET"]),
    Route(f"{_NS}/objects", create_object, methods=["POST"]),
    _delete_all("o", "objects"),
    Route(f"{_NS}/objects/{{name}}", show_object, methods=["GET"]),
    Route(f"{_NS}/objects/{{name}}", update_object, methods=["PUT"]),
    Route(f"{_NS}/objects/{{name}}", delete_object, methods=["DELETE"]),
    Route(f"{_NS}/properties", list_properties, methods=["GET"]),
    Route(f"{_NS}/properties", create_property, methods=["POST"]),
    _delete_all("p", "properties"),
    Route(f"{_NS}/properties/{{name}}", show_property, methods=["GET"]),
    Route(f"{_NS}/properties/{{name}}", update_property, methods=["PUT"]),
    Route(f"{_NS}/properties/{{name}}", delete_property, methods=["DELETE"]),
    Route(f"{_NS}/tags", list_tags, methods=["GET"]),
    Route(f"{_NS}/tags", create_tags, methods=["POST"]),
    _delete_all("t", "tags"),
    Route(f"{_NS}/tags/{{name}}", show_tag, methods=["GET"]),
    Route(f"{_NS}/tags/{{name}}", create_tag, methods=["POST"]),
    Route(f"{_NS}/tags/{{name}}", update_tag, methods=["PUT"]),
    Route(f"{_NS}/tags/{{name}}", delete_tag, methods=["DELETE"]),
    Route(f"{_NS}/resource_types", list_associations, methods=["GET"]),
    Route(f"{_NS}/resource_types", create_association, methods=["POST"]),
    Route(f"{_NS}/resource_types/{{name}}", delete_association, methods=["DELETE"]),
]
