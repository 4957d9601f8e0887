"""Image show answered by the protocol: ``GET /v2/images/{id}`` before any ASGI layer.

Compute nodes and dashboards show images more than they make any other call, and the
registry stores each image's view rendered, so a show is one point read. Through ASGI it
also built a scope, a task, a request/response cycle and a message dict per layer, which
cost more than the read. :class:`ShowShortcut` is the protocol's
:class:`imgproxy.protocol.QuickAnswer` for it: it answers when the whole answer can be told
at once (the caller known with no I/O, the image visible to it) and declines anything else
(an unknown token, a Keystone token not yet looked up, an image the caller may not see,
HEAD, oversized headers), which the ASGI app then answers as before, so every error body and
its headers keep one source. What the access middleware adds to every answer is added here
by the same :class:`imgproxy.ops.access.AccessRecorder`: the ``X-Openstack-Request-Id``
header, the request metrics, the request line.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .attrs import is_uuid
from .auth import ImmediateAuthenticator
from .errors import ApiError
from .heads import RawHeaders, headers_too_large
from .ops.access import REQUEST_ID_HEADER, AccessRecorder, strip_minor_version
from .ops.logs import REQUEST_ID
from .protocol import Respond

if TYPE_CHECKING:
    from .service import Service

__all__ = ["ShowShortcut", "SHOW_ROUTE", "shown_id"]

SHOW_ROUTE = "/v2/images/{image_id}"
_PREFIX = "/v2/images/"
_LENGTH = len(_PREFIX) + 36  # a canonical UUID
_JSON_TYPE = (b"content-type", b"application/json")
_ID_HEADER = REQUEST_ID_HEADER.lower().encode()


def shown_id(method: str, path: str) -> str | None:
    """The image id of ``GET /v2/images/{uuid}`` (version prefix stripped), lowercased;
    None for any other request."""
    if method != "GET" or len(path) != _LENGTH or not path.startswith(_PREFIX):
        return None
    image_id = path[len(_PREFIX):]
    return image_id.lower() if is_uuid(image_id) else None


class ShowShortcut:
    """A :class:`imgproxy.protocol.QuickAnswer` for image show (see the module docs); one
    per worker process, built by the app's lifespan. The event loop's only."""

    def __init__(self, service: Service, recorder: AccessRecorder) -> None:
        self._records = service.images.records
        # Authenticators that may need I/O for every caller leave every show to the app.
        self._auth = service.auth if isinstance(service.auth, ImmediateAuthenticator) else None
        self._metrics = service.metrics
        self._recorder = recorder

    def __call__(self, method: str, path: str, headers: list[tuple[bytes, bytes]], respond: Respond) -> bool:
        start = time.perf_counter()
        path = strip_minor_version(path)
        image_id = shown_id(method, path)
        if image_id is None or self._auth is None or headers_too_large(headers):
            return False
        request_id = self._recorder.request_id(headers)
        token = REQUEST_ID.set(request_id)  # names the request in any line logged meanwhile
        try:
            try:
                context = self._auth.authenticate_now(RawHeaders(headers))
                if context is None:
                    return False
                view = self._records.view(context, image_id)
            except ApiError:
                return False  # the app answers it, with its error body
            # What the app sends: Starlette's Response(view, media_type="application/json")
            # headers in their order, then the access middleware's request id.
            respond(200, [(b"content-length", b"%d" % len(view)), _JSON_TYPE, (_ID_HEADER, request_id.encode())],
                    view)
            self._recorder.done(self._metrics, "GET", SHOW_ROUTE, path, 200, len(view), time.perf_counter() - start)
            return True
        finally:
            REQUEST_ID.reset(token)
