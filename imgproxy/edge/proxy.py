"""Every Image API request the edge does not answer itself goes to the upstream, streamed.

The request (method, path and query as sent, end-to-end headers including the caller's
``X-Auth-Token``, and the body piece by piece as it arrives: an upload of image data is
never held whole) goes to the upstream, and its answer (status, end-to-end headers, body
as it arrives, undecoded) comes back unchanged, so authorization, validation and errors
stay the upstream's. A ``Location`` or ``Content-Location`` naming the upstream is
rewritten to name the edge; Glance's ``next``, ``self`` and ``file`` links are paths, which
work on the edge as they are.

An upstream that cannot be reached answers 503 (JSON, naming it); one that fails after its
status line went out has the client connection cut, as the upstream's own failure would.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable

import httpx
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope, Send

from ..errors import error_response
from .upstream import UpstreamApi

__all__ = ["UpstreamProxy", "HOP_BY_HOP"]

log = logging.getLogger("imgproxy.edge")

# RFC 9110 section 7.6.1 (plus Host, which names the upstream, and Expect, which httpx does not
# implement; Date, which this server sets).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
                        "proxy-authorization", "te", "trailer", "trailers", "transfer-encoding", "upgrade",
                        "host", "expect"})
_LINK_HEADERS = frozenset({"location", "content-location"})


def _end_to_end(headers: Iterable[tuple[str, str]], also_drop: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    pairs = list(headers)
    named = {token.strip().lower() for name, value in pairs if name.lower() == "connection"
             for token in value.split(",")}
    drop = HOP_BY_HOP | named | also_drop
    return [(name, value) for name, value in pairs if name.lower() not in drop]


async def _request_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        body = message.get("body", b"")
        if body:
            yield body
        if not message.get("more_body", False):
            return


class UpstreamProxy:
    """An ASGI app forwarding to ``upstream``. Safe to share between requests."""

    def __init__(self, upstream: UpstreamApi) -> None:
        self.upstream = upstream

    def _link(self, value: str, edge_base: str) -> str:
        base = self.upstream.base_url
        return edge_base + value[len(base):] if value.startswith(base) else value

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        raw_path = scope.get("raw_path") or scope["path"].encode()
        url = self.upstream.base_url + raw_path.decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        headers = _end_to_end(request.headers.items())
        has_body = any(name.lower() in ("content-length", "transfer-encoding") for name, _ in request.headers.items()) \
            and request.headers.get("content-length") != "0"
        client = self.upstream.client
        outgoing = client.build_request(scope["method"], url, headers=headers,
                                        content=_request_body(receive) if has_body else None)
        try:
            response = await client.send(outgoing, stream=True)
        except ClientDisconnect:
            return
        except httpx.HTTPError as exc:
            if isinstance(exc.__cause__, ClientDisconnect) or isinstance(exc.__context__, ClientDisconnect):
                return
            log.warning("upstream image API %s failed for %s %s: %r", self.upstream.base_url, scope["method"],
                        scope["path"], exc)
            await error_response(503, "Service Unavailable",
                                 f"The upstream image API {self.upstream.base_url} is unavailable: "
                                 f"{type(exc).__name__}.")(scope, receive, send)
            return
        edge_base = str(request.base_url).rstrip("/")
        out = [(name, self._link(value, edge_base) if name.lower() in _LINK_HEADERS else value)
               for name, value in _end_to_end(response.headers.multi_items(), frozenset({"date"}))]
        try:
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in out]})
            async for piece in response.aiter_raw():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            return  # the client went away
        finally:
            await response.aclose()
