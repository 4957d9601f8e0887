"""Every request: its id, one log line, and its metrics.

:class:`AccessMiddleware` is the outermost layer of the app (pure ASGI, so streaming passes
through untouched). It

- gives the request an id: the client's own ``X-Openstack-Request-Id`` when it is a sane
  token, else ``req-<uuid4>``; every response carries it, errors included, and every log line
  written while the request runs names it (:data:`imgproxy.ops.logs.REQUEST_ID`);
- writes one line when the response is done: method, route template, path (never the query
  string, which may hold a token), status, body bytes, duration and, for image data reads,
  the cache outcome;
- counts the request in the metrics, and for data reads the bytes by where they came from
  and the time to the first byte.

Where the bytes came from: the cache's reader yields chunks read from its disk as ``bytes``
and the bytes of a fill (shared by its waiters) as ``memoryview``s of the fill's buffer
(:mod:`cache.reader`, :mod:`cache.fill`), and the data responses send them unchanged, so
the type of each body piece tells a hit from a fill at the cost of one check per piece
(tests/test_ops_access.py pins this: a cold read logs ``miss``, a warm one ``hit``).
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import error_response
from ..zerocopy import ZEROCOPY
from .logs import ACCESS_LOGGER, REQUEST_ID

__all__ = ["AccessMiddleware", "REQUEST_ID_HEADER", "DATA_ROUTE"]

REQUEST_ID_HEADER = "X-Openstack-Request-Id"
DATA_ROUTE = "/v2/images/{image_id}/file"
_HEADER_KEY = REQUEST_ID_HEADER.lower().encode()
# A client's id is kept when it could not smuggle anything into a log line or a header.
_CLIENT_ID = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# Served bytes go to the counters every this many bytes (and at the end): a counter update
# costs a few µs, a 1 MiB piece a few hundred; a scrape still sees a long download move.
_COUNT_EVERY = 64 * 1024 * 1024
# Metric labels take these methods as they are, any other as OTHER (labels must stay few).
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

log = logging.getLogger("imgproxy")
access_log = logging.getLogger(ACCESS_LOGGER)


class _RequestIds:
    """``req-<uuid4>`` ids from random bytes drawn a few KiB at a time (one system call per
    256 ids, not one each). Not thread-safe: the event loop's only."""

    def __init__(self) -> None:
        self._pool = b""

    def new(self) -> str:
        if not self._pool:
            self._pool = os.urandom(4096)
        raw, self._pool = self._pool[:16], self._pool[16:]
        return f"req-{uuid.UUID(bytes=raw, version=4)}"

    def of(self, scope: Scope) -> str:
        """The client's id when it sent a sane one, else a new one."""
        for name, value in scope["headers"]:
            if name == _HEADER_KEY:
                if _CLIENT_ID.fullmatch(value):
                    return bytes(value).decode()
                break
        return self.new()


def strip_minor_version(path: str) -> str:
    """Map ``/v2.N/...`` onto ``/v2/...``: every v2 minor version shares one API."""
    if path.startswith("/v2."):
        rest = path[4:]
        digits = len(rest) - len(rest.lstrip("0123456789"))
        if digits and (len(rest) == digits or rest[digits] == "/"):
            return "/v2" + rest[digits:]
    return path


class _Exchange:
    """What one request sent back, as the middleware saw it."""

    __slots__ = ("status", "bytes", "cached", "filled", "counted_cached", "counted_filled", "first_byte", "started")

    def __init__(self) -> None:
        self.status = 0
        self.bytes = self.cached = self.filled = self.counted_cached = self.counted_filled = 0
        self.first_byte = 0.0
        self.started = False

    @property
    def counted(self) -> int:
        return self.counted_cached + self.counted_filled

    def count(self, metrics: Any) -> None:
        """Add the data bytes sent since the last call to the served-bytes counters."""
        if self.cached > self.counted_cached:
            metrics.served_cache.inc(self.cached - self.counted_cached)
            self.counted_cached = self.cached
        if self.filled > self.counted_filled:
            metrics.served_fill.inc(self.filled - self.counted_filled)
            self.counted_filled = self.filled

    def outcome(self) -> str:
        if self.cached and self.filled:
            return "partial"
        if self.filled:
            return "miss"
        return "hit" if self.cached else "-"


class AccessMiddleware:
    """See the module docs. Counts in the service's metrics (none with ``metrics = false``:
    ids and log lines only)."""

    def __init__(self, app: ASGIApp, *, edge: bool = False) -> None:
        self.app = app
        self.unmatched = "(proxied)" if edge else "(unmatched)"
        self._ids = _RequestIds()
        # (metrics, method, route, status) -> the histogram's child: labels() takes a lock
        # and builds a key each call; the combinations are few (methods x routes x statuses).
        self._observers: dict[tuple[Any, str, str, str], Any] = {}

    def _route(self, scope: Scope, child: Scope) -> str:
        route = child.get("route")
        if route is None:  # a layer below copied the scope (the edge's data route does)
            app = scope.get("app")
            for candidate in getattr(app, "routes", ()):
                if candidate.matches(child)[0] is Match.FULL:
                    route = candidate
                    break
        return getattr(route, "path", None) or self.unmatched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = self._ids.of(scope)
        token = REQUEST_ID.set(request_id)
        header = (REQUEST_ID_HEADER.encode(), request_id.encode())
        path = strip_minor_version(scope["path"])
        child = scope if path == scope["path"] else dict(scope, path=path, raw_path=path.encode())
        # Only GET bodies of the data route are image bytes worth telling apart.
        data = scope["method"] == "GET" and path.startswith("/v2/images/") and path.endswith("/file")
        ex = _Exchange()
        service = getattr(scope["app"].state, "service", None)
        metrics = service.metrics if service is not None else None

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                ex.status = message["status"]
                ex.started = True
                headers = list(message.get("headers", ()))
                theirs = next((value for name, value in headers if name.lower() == _HEADER_KEY), None)
                if theirs is None:
                    message["headers"] = [*headers, header]
                else:  # an edge's upstream answered with its own id: that one is the request's
                    REQUEST_ID.set(bytes(theirs).decode(errors="replace"))
            elif message["type"] in ("http.response.body", ZEROCOPY):
                # A zero-copy part is a verified range of a file on disk: cached bytes.
                body = message.get("body", b"")
                n = len(body) if message["type"] != ZEROCOPY else int(message.get("count") or 0)
                if n:
                    if not ex.bytes:
                        ex.first_byte = time.perf_counter() - start
                    ex.bytes += n
                    if data:
                        if type(body) is memoryview and message["type"] != ZEROCOPY:
                            ex.filled += n
                        else:
                            ex.cached += n
                        if metrics is not None and ex.bytes - ex.counted >= _COUNT_EVERY:
                            ex.count(metrics)
            await send(message)

        try:
            await self.app(child, receive, send_observed)
        except Exception:
            if ex.started:
                ex.status = ex.status or 500
                raise  # mid-body: the server drops the connection, as it must
            log.exception("unexpected error on %s %s", scope["method"], path)
            ex.status = 500
            await error_response(500, "Internal Server Error", "The server failed to handle this request.")(
                child, receive, send_observed)
        finally:
            self._done(scope, child, path, ex, time.perf_counter() - start, data, metrics)
            REQUEST_ID.reset(token)

    def _done(self, scope: Scope, child: Scope, path: str, ex: _Exchange, duration: float, data: bool,
              metrics: Any) -> None:
        route = self._route(scope, child)
        outcome = ex.outcome() if data and route.endswith("/file") else "-"
        if metrics is not None:
            status = str(ex.status or 499)  # 499: the client went before any answer (nginx's word)
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            key = (metrics, method, route, status)
            observer = self._observers.get(key)
            if observer is None:
                observer = self._observers[key] = metrics.requests.labels(method, route, status)
            observer.observe(duration)
            if outcome != "-":
                ex.count(metrics)
                metrics.reads.labels(outcome).inc()
                metrics.first_byte.labels(outcome).observe(ex.first_byte)
        if access_log.isEnabledFor(logging.INFO):
            fields: dict[str, Any] = {"method": scope["method"], "route": route, "path": path,
                                      "status": ex.status or 499, "bytes": ex.bytes,
                                      "duration_s": round(duration, 6), "cache": outcome}
            # Logger.info would walk the stack for the caller's file and line, which no
            # request line shows.
            access_log.handle(access_log.makeRecord(ACCESS_LOGGER, logging.INFO, __file__, 0, "%s %s %s",
                                                    (scope["method"], path, ex.status), None,
                                                    extra={"access": fields}))
