"""``GET``/``HEAD /v2/images/{image_id}/file`` on the edge: authorized upstream, served from the cache.

1. The upstream shows the image to the caller's credentials (:mod:`.authz`, reused for
   ``edge_auth_ttl`` seconds), or its refusal (401, 403, 404...) goes back as it is.
2. An image the cache cannot serve (not active, no digests) is proxied: its status
   and data stay the upstream's (a deactivated image: 403 to members, data to admins).
3. Otherwise the bytes come from the cache, filled from the upstream's ``/file`` with
   ranged reads (or one sequential read, see :mod:`backends.image_api`), single-flight
   across every request; until the image has been verified whole (:mod:`.verify`) each
   response holds its last byte until it is. The download itself is the service's
   (:func:`imgproxy.images.downloads.open_download`): cached chunks are verified (and
   remembered as verified) before they leave, go out with ``sendfile`` where the server
   offers it, and a chunk found corrupt is refilled, never sent.

An upstream that cannot be reached or keeps failing: 503 with a JSON body naming it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from backends import ByteRange

from ..api.data import download_response
from ..errors import ApiError, BadGateway, ServiceUnavailable
from ..images import ImageDataError
from ..images.downloads import Piece, open_download
from .proxy import UpstreamProxy
from .service import EdgeService, cacheable
from .upstream import Answer, UpstreamUnavailable
from .verify import hold_last_byte

__all__ = ["routes"]


class UpstreamAnswerResponse(Response):
    """An upstream answer passed back as it is (its end-to-end headers, its body)."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.body, status_code=answer.status)
        keep = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in answer.headers
                if n.lower() not in ("content-length", "transfer-encoding", "connection", "date", "content-encoding")]
        self.raw_headers = keep + [(b"content-length", str(len(answer.body)).encode())]


class ProxiedResponse(Response):
    """The request handed to the proxy whole (status, headers and body all the upstream's)."""

    def __init__(self, proxy: UpstreamProxy) -> None:
        self.proxy = proxy
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.proxy(scope, receive, send)


def _read_error(service: EdgeService, exc: ImageDataError) -> ApiError:
    """A read through the cache failed before any byte was sent."""
    upstream = service.upstream.base_url
    if exc.corrupt:
        return BadGateway(f"The upstream image API {upstream} returned data that does not match the image: {exc}")
    return ServiceUnavailable(f"The image data could not be read from the upstream image API {upstream}: {exc}")


async def download(request: Request) -> Response:
    service: EdgeService = request.app.state.service
    image_id = str(request.path_params["image_id"])
    try:
        answer = await service.authorizer.check(image_id, request.headers)
    except UpstreamUnavailable as exc:
        raise ServiceUnavailable(str(exc)) from exc
    if answer.status != 200:
        return UpstreamAnswerResponse(answer)
    record = answer.json()
    if not cacheable(record):
        return ProxiedResponse(service.proxy)
    manifest = await service.manifest_for(image_id, record)
    location = service.location(image_id)

    def body(wanted: ByteRange) -> AsyncIterator[Piece]:
        # Chunks on disk come as verified file slices, sent with sendfile where the server can.
        sliced = service.cache.read_slices(image_id, manifest, wanted, service.source, location)
        if service.verifier.verified(image_id, manifest):
            return sliced
        return hold_last_byte(sliced, wanted.length,
                              service.verifier.start(image_id, manifest, service.backend, location))

    # If-Range names a validator we never send, so it cannot match: serve everything.
    range_header = None if "if-range" in request.headers else request.headers.get("range")
    opened = await open_download(record, manifest.size, range_header, body, head=request.method == "HEAD",
                                 error=lambda exc: _read_error(service, exc))
    return download_response(opened, service.trimmer)


routes: list[BaseRoute] = [Route("/v2/images/{image_id}/file", download, methods=["GET", "HEAD"])]
