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
from collections.abc import Iterable
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import error_response
from ..zerocopy import ZEROCOPY
from .logs import ACCESS_LOGGER, REQUEST_ID

__all__ = ["AccessMiddleware", "AccessRecorder", "REQUEST_ID_HEADER", "DATA_ROUTE"]

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
# A random hex digit with its two high bits set to 10: a UUID's variant digit.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}

log = logging.getLogger("imgproxy")
access_log = logging.getLogger(ACCESS_LOGGER)


class _RequestIds:
    """``req-<uuid4>`` ids from random bytes drawn a few KiB at a time (one system call per
    256 ids, not one each), spelled as ``str(uuid.UUID(bytes=..., version=4))`` spells them
    at a quarter of its cost. Not thread-safe: the event loop's only."""

    def __init__(self) -> None:
        self._pool = ""  # hex digits, 32 an id

    def new(self) -> str:
        if not self._pool:
            self._pool = os.urandom(4096).hex()
        h, self._pool = self._pool[:32], self._pool[32:]
        # The version (4) and variant (10xx) bits set, as uuid.UUID(version=4) sets them.
        return f"req-{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"

    def of(self, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """The client's id when it sent a sane one, else a new one."""
        for name, value in headers:
            if name == _HEADER_KEY:
                if _CLIENT_ID.fullmatch(value):
                    return bytes(value).decode()
                break
        return self.new()


class AccessRecorder:
    """What every answer leaves behind: its request id, its metrics and its request line.

    One per app, shared by :class:`AccessMiddleware` and the answers given before any ASGI
    layer (:mod:`imgproxy.shortcut`), so that both count and log alike. Not thread-safe:
    the event loop's only.
    """

    def __init__(self) -> None:
        self._ids = _RequestIds()
        # (metrics, method, route, status) -> the histogram's child: labels() takes a lock
        # and builds a key each call; the combinations are few (methods x routes x statuses).
        self._observers: dict[tuple[Any, str, str, int], Any] = {}

    def request_id(self, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """The id of a request with these (ASGI) headers: the client's own when sane, else new."""
        return self._ids.of(headers)

    def done(self, metrics: Any, method: str, route: str, path: str, status: int, sent: int, duration: float,
             outcome: str = "-") -> None:
        """Count one answer in ``metrics`` (None: not counted) and write its request line.

        ``status`` 499: the client went before any answer (nginx's word); ``sent``: body
        bytes; ``outcome``: a data read's cache outcome, else ``-``."""
        if metrics is not None:
            label = method if method in _METHODS else "OTHER"
            key = (metrics, label, route, status)
            observer = self._observers.get(key)
            if observer is None:
                observer = self._observers[key] = metrics.requests.labels(label, route, str(status))
            observer.observe(duration)
        if access_log.isEnabledFor(logging.INFO):
            fields: dict[str, Any] = {"method": method, "route": route, "path": path, "status": status,
                                      "bytes": sent, "duration_s": round(duration, 6), "cache": outcome}
            # Logger.info would walk the stack for the caller's file and line, which no
            # request line shows.
            access_log.handle(access_log.makeRecord(ACCESS_LOGGER, logging.INFO, __file__, 0, "%s %s %s",
                                                    (method, path, status), None, extra={"access": fields}))


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

    def __init__(self, app: ASGIApp, *, edge: bool = False, recorder: AccessRecorder | None = None) -> None:
        self.app = app
        self.unmatched = "(proxied)" if edge else "(unmatched)"
        self.recorder = recorder or AccessRecorder()

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
        request_id = self.recorder.request_id(scope["headers"])
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
        if metrics is not None and outcome != "-":
            ex.count(metrics)
            metrics.reads.labels(outcome).inc()
            metrics.first_byte.labels(outcome).observe(ex.first_byte)
        self.recorder.done(metrics, scope["method"], route, path, ex.status or 499, ex.bytes, duration, outcome)
