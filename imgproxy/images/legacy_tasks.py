"""``POST /v2/tasks``: Glance's legacy ``import`` task (an image created and filled from an
http(s) URL in one call), admins only.

The request is checked as Glance 33 checks it before it answers 201: the tasks policy
(admins), ``type`` and ``input`` present, the task schema, and ``import_from`` (http or https
only, and through the same URL filter as web-download: a URL that does not pass, such as a
host that does not resolve, is a 400 at once, Glance's ``validate_legacy_import_from_uri``).
Then the image is created from ``image_properties`` and filled by a web-download import
(:mod:`imgproxy.images.import_runs`) whose task is this ``import`` task: ``pending`` ->
``processing`` -> ``success`` with ``result`` ``{"image_id": ...}``, or ``failure``.

Deviations, each an earlier 400 where Glance creates a task that can only fail: other task
types (``api_image_import`` and ``location_import`` are created by their own calls), an
input without ``import_from_format`` or ``image_properties``, or image properties without
both formats.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..context import RequestContext
from ..errors import BadRequest
from ..urlfilter import UrlRefused
from .records import BodyReader

if TYPE_CHECKING:
    from ..service import Service

__all__ = ["LegacyTasks", "check_task_body"]

TASK_TYPES = ("import", "api_image_import", "location_import")
_INPUT_KEYS = ("import_from", "import_from_format", "image_properties")


def check_task_body(body: Any) -> dict[str, Any]:
    """The ``input`` of a legacy import task body; 400 (Glance's messages where it has them)."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    for key in ("type", "input"):
        if key not in body:
            raise BadRequest(f"Task '{key}' is required")
    kind, task_input = body["type"], body["input"]
    if kind not in TASK_TYPES:
        raise BadRequest(f"Provided object does not match schema 'task': {str(kind)[:64]!r} is not one of "
                         f"{list(TASK_TYPES)}")
    if task_input is not None and not isinstance(task_input, dict):
        raise BadRequest("Provided object does not match schema 'task': 'input' must be an object or null")
    if kind != "import":
        raise BadRequest(f"Tasks of type {kind!r} are created by the image import and locations calls, "
                         "not by POST /v2/tasks.")
    task_input = task_input or {}
    for key in _INPUT_KEYS:
        if key not in task_input:
            raise BadRequest(f"Input does not contain '{key}' field")
    properties = task_input["image_properties"]
    if not isinstance(properties, dict):
        raise BadRequest("Input field 'image_properties' must be an object.")
    return task_input


def _check_import_from(location: Any) -> str:
    """Glance's ``validate_location_uri``: http(s) only, never a local file."""
    if not location or not isinstance(location, str):
        raise BadRequest(f"Invalid location: {str(location)[:256]}")
    scheme = urlsplit(location).scheme.lower()
    if scheme in ("file", "filesystem"):
        raise BadRequest("File based imports are not allowed. Please use a non-local source of image data.")
    if scheme not in ("http", "https"):
        raise BadRequest("The given uri is not valid. Please specify a valid uri from the following list of "
                         "supported uri ['http']")
    return location


class LegacyTasks:
    """The legacy import task workflow of one process."""

    def __init__(self, service: "Service") -> None:
        self._s = service

    async def create(self, ctx: RequestContext, body: BodyReader, token: str | None) -> dict[str, Any]:
        """Check the task, create its image and start filling it; returns the pending task.

        Forbidden unless admin; BadRequest for a body or ``import_from`` Glance refuses (no
        image is created then); what creating the image raises (its properties)."""
        images = self._s.images
        images.imports.check_tasks_api(ctx)
        task_input = check_task_body(await body())
        url = _check_import_from(task_input["import_from"])
        try:
            await images.imports.url_filter.pin_async(url)
        except UrlRefused as exc:
            raise BadRequest(f"URI for legacy import task does not pass filtering: {url[:256]} ({exc})") from None
        # Glance's set_base_image_properties: an empty set gets formats, for its scripts.
        properties = dict(task_input["image_properties"]) or {"disk_format": "qcow2", "container_format": "bare"}
        for key in ("disk_format", "container_format"):
            if not properties.get(key):
                raise BadRequest(f"Input field 'image_properties' needs '{key}' for an import.")

        async def properties_body() -> dict[str, Any]:
            return properties

        record = await images.records.create(ctx, properties_body)

        async def web_download() -> dict[str, Any]:
            return {"method": {"name": "web-download", "uri": url}}

        task = await images.imports.start(ctx, str(record["id"]), web_download, {}, token, legacy_input=task_input)
        assert task is not None  # only a copy can have nothing to do
        return task
