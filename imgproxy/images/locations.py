"""Glance's locations API workflows: add a location to a queued image, list them.

Adding registers where a queued image's bytes already live (an http(s) URL; the store
is read-only); the bytes are read later by a background pass (:mod:`imgproxy.locations`)
or, with validation data, verified by the first whole read. Both calls are for admins and
services (:func:`imgproxy.policy.check_service`, :func:`imgproxy.policy.check_add_location`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from backends import BackendError, BackendNotFound, Backends
from cache import OS_HASH_ALGO, Manifest

from ..context import RequestContext
from .. import policy
from ..errors import BadRequest, Conflict
from .records import BodyReader

if TYPE_CHECKING:
    from ..service import Service

__all__ = ["ImageLocations", "parse_location"]

_HEX = re.compile(r"^[0-9a-fA-F]*$")
_HEX_LENGTHS = {"checksum": 32, "os_hash_value": 128}  # md5, sha512
_VALIDATION_KEYS = frozenset({"checksum", "os_hash_algo", "os_hash_value"})
# Schemes a client may not name: the service would read its own files for them.
_LOCAL_SCHEMES = frozenset({"file"})


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


class ImageLocations:
    """The locations workflows of one process."""

    def __init__(self, service: "Service") -> None:
        self._s = service

    async def add(self, ctx: RequestContext, image_id: str, body: BodyReader) -> None:
        """Record the body's location as the data of a queued image: it turns active at
        once (with validation data) or saving (a digest pass starts). 400 for a bad body
        or a URL with no readable data, 409 unless queued."""
        service = self._s
        policy.check_add_location(ctx, service.registry.get_visible(ctx, image_id))
        url, validation = parse_location(await body())
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
        store = service.backends.store_of(url)
        await service.writer.run(lambda: service.registry.add_location(
            ctx, image_id, url, size=size, validation=validation, store=store,
            also=lambda txn: service.cache.record_manifest(txn, image_id, manifest)))
        if validation is None:
            service.locations.start(image_id, url, "digest")
        # With validation data the first whole read verifies it (imgproxy.images.verify).

    async def list(self, ctx: RequestContext, image_id: str) -> list[dict[str, Any]]:
        """``[{"url", "metadata"}]`` of the image: 404 if the image is not visible to ``ctx``
        (before anything else, as Glance), 403 unless admin or service by the caller's own token
        (Glance's ``fetch_image_location``)."""
        self._s.registry.get_visible(ctx, image_id)
        policy.check_service(ctx, "read image locations")
        return [
            {"url": loc.get("url"), "metadata": loc.get("metadata") or {}}
            for loc in self._s.registry.locations(image_id)
        ]
