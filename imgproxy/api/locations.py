"""Glance's locations API (Image API v2.17+): ``POST``/``GET /v2/images/{image_id}/locations``.

``POST`` registers where a queued image's bytes already live (an http(s) URL; the
store is read-only) and answers 202 at once; the bytes are read later by a background
pass (:mod:`imgproxy.locations`). Both calls are for admins only. Locations stay hidden
from the image JSON (Glance's default ``show_multiple_locations = False``).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from backends import BackendError, Backends, BackendNotFound
from cache import OS_HASH_ALGO, Manifest

from ..context import RequestContext
from ..errors import BadRequest, Conflict, Forbidden
from ..service import Service
from .common import caller, json_response, path_image_id, read_json, service_of

__all__ = ["routes", "parse_location"]

_HEX = re.compile(r"^[0-9a-fA-F]*$")
_HEX_LENGTHS = {"checksum": 32, "os_hash_value": 128}  # md5, sha512
_VALIDATION_KEYS = frozenset({"checksum", "os_hash_algo", "os_hash_value"})
# Schemes a client may not name: the service would read its own files for them.
_LOCAL_SCHEMES = frozenset({"file"})


def _check_admin(service: Service, ctx: RequestContext, image_id: str) -> None:
    """404 if the image is not visible to ``ctx`` (before anything else, as Glance), 403 unless admin."""
    service.registry.get_visible(ctx, image_id)
    if not ctx.is_admin:
        raise Forbidden("Only administrators may read or add image locations.")


def _check_validation(data: Any) -> dict[str, str]:
    if not isinstance(data, dict):
        raise BadRequest("validation_data must be an object.")
    unknown = sorted(set(data) - _VALIDATION_KEYS)
    if unknown:
        raise BadRequest(f"Unknown keys in validation_data: {', '.join(unknown)}.")
    if "os_hash_algo" not in data or "os_hash_value" not in data:
        raise BadRequest("validation_data needs os_hash_algo and os_hash_value.")
    if data["os_hash_algo"] != OS_HASH_ALGO:
        raise BadRequest(f"validation_data os_hash_algo must be {OS_HASH_ALGO!r}, the service's hashing algorithm.")
    out = {"os_hash_algo": OS_HASH_ALGO}
    for key, length in _HEX_LENGTHS.items():
        value = data.get(key)
        if value is None and key == "checksum":
            continue
        if not isinstance(value, str) or len(value) != length or not _HEX.match(value):
            raise BadRequest(f"validation_data {key} must be {length} hexadecimal digits.")
        out[key] = value.lower()
    return out


def parse_location(body: Any) -> tuple[str, dict[str, str] | None]:
    """``(url, validation)`` from an Add Location body; 400 on anything else."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    unknown = sorted(set(body) - {"url", "validation_data"})
    if unknown:
        raise BadRequest(f"Unknown keys in the location: {', '.join(unknown)}.")
    url = body.get("url")
    if not isinstance(url, str) or not url:
        raise BadRequest("The location needs a url string.")
    scheme = urlsplit(url).scheme.lower()
    if scheme in _LOCAL_SCHEMES or not Backends.known_scheme(url):
        raise BadRequest(f"Invalid location {scheme or url!r}: the URL scheme is not a readable store.")
    validation = body.get("validation_data")
    return url, (None if validation is None else _check_validation(validation))


async def add_location(request: Request) -> Response:
    """``POST /v2/images/{image_id}/locations``: 202, the image goes active (validated) or saving."""
    ctx, service = caller(request), service_of(request)
    image_id = path_image_id(request)
    _check_admin(service, ctx, image_id)
    url, validation = parse_location(await read_json(request, service.settings.max_json_body))
    record = service.registry.get_visible(ctx, image_id)
    if record["status"] != "queued":
        # Checked again in the write transaction; this spares asking the upstream.
        raise Conflict(f"Image {image_id} is not queued (status {record['status']}); cannot add a location.")
    try:
        size = await service.backends.for_location(url).size(url)
    except BackendNotFound as exc:
        raise BadRequest(f"Invalid location: no image data at {exc.location or 'its URL'} ({exc}).") from exc
    except BackendError as exc:
        raise BadRequest(f"Invalid location: cannot read the size of {exc.location or 'its data'} ({exc}).") from exc
    cap = service.settings.image_size_cap
    if size > cap:
        raise BadRequest(f"The data at the location ({size} bytes) exceeds the image size cap of {cap} bytes.")
    manifest = Manifest.unknown(size, service.settings.chunk_size,
                                checksum=(validation or {}).get("checksum"),
                                os_hash_value=(validation or {}).get("os_hash_value"))
    await run_in_threadpool(
        service.registry.add_location, ctx, image_id, url, size=size, validation=validation,
        also=lambda txn: service.cache.record_manifest(txn, image_id, manifest),
    )
    if validation is None:
        service.locations.start(image_id, url, "digest")
    # With validation data the verify pass waits for the first full read (imgproxy.locations).
    return Response(status_code=202)


async def get_locations(request: Request) -> Response:
    """``GET /v2/images/{image_id}/locations``: 200 ``[{"url", "metadata"}]``, admins only."""
    ctx, service = caller(request), service_of(request)
    image_id = path_image_id(request)
    _check_admin(service, ctx, image_id)
    return json_response([
        {"url": loc.get("url"), "metadata": loc.get("metadata") or {}}
        for loc in service.registry.locations(image_id)
    ])


routes: list[BaseRoute] = [
    Route("/v2/images/{image_id}/locations", add_location, methods=["POST"]),
    Route("/v2/images/{image_id}/locations", get_locations, methods=["GET"]),
]
