"""The HTTP/1.1 protocol ``imgproxy serve`` runs: uvicorn's httptools protocol, its request head bounded.

uvicorn's httptools protocol keeps a request's URL and headers in memory without a limit and
waits for them without a deadline (its keep-alive timer stops at a connection's first byte),
so a client that dribbles an endless head holds memory and a connection slot forever; with
``limit_concurrency`` set, enough such clients turn every other request into a 503. This
subclass bounds both, with the two uvicorn settings whose meaning they are:

- ``h11_max_incomplete_event_size``: the most bytes of request line and headers one request
  may send (more: 431 and the connection closed). uvicorn applies it only to its h11 protocol.
- ``timeout_keep_alive``: the most seconds a connection waits for a complete request head,
  counted from the connection's start or from the first byte of a later request (then it is
  closed, as an idle keep-alive connection is).

Requests the parser refuses (a malformed or 5,000-digit ``Content-Length``, garbage) are
answered with the API's JSON error body instead of uvicorn's plain-text 400.

It also implements the ASGI ``http.response.zerocopysend`` extension (:mod:`imgproxy.zerocopy`):
image data on local disk goes to the socket with ``sendfile``; and ``imgproxy.body_into``
(:mod:`imgproxy.body_into`): an upload's body is copied once, into the app's own buffers.

**Quick answers.** An app may put a :class:`QuickAnswer` in its lifespan state under
:data:`QUICK`. The protocol then offers it each request that has no body, arrives on an
idle keep-alive HTTP/1.1 connection and would start an ASGI task now: the app may answer
it at once, synchronously, from the parser's callback, with no scope, task, cycle or ASGI
message built (image show, the call most made, so costs less than half the CPU). A request
it declines goes to the ASGI app as any other.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any, Protocol

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from .body_into import BODY_INTO, BodyInto
from .errors import error_response
from .zerocopy import SENDFILE, ZEROCOPY, ZeroCopySend

__all__ = ["BoundedHttpToolsProtocol", "PROTOCOL", "QUICK", "QuickAnswer", "Respond"]

# What ``uvicorn.run(http=...)`` takes: an import string, so that worker processes load it too.
PROTOCOL = "imgproxy.protocol:BoundedHttpToolsProtocol"

# The lifespan state key under which an app offers its QuickAnswer.
QUICK = "imgproxy.quick_answer"

log = logging.getLogger("imgproxy")

Headers = list[tuple[bytes, bytes]]


class Respond(Protocol):
    def __call__(self, status: int, headers: Headers, body: bytes) -> None:
        """Send the whole response: ``headers`` (lowercase names, valid values, a
        ``content-length`` equal to ``len(body)``) follow the server's own (``date``)."""
        ...


class QuickAnswer(Protocol):
    """An app's synchronous answer to some requests, called on the event loop."""

    def __call__(self, method: str, path: str, headers: Headers, respond: Respond) -> bool:
        """Answer the request by calling ``respond`` once and return True; or return False
        without calling it: the request then goes to the ASGI app, as if never offered.

        ``path`` is the URL's path, ASCII, with no percent-escape and no query string;
        ``headers`` are the request's, names lowercased. It must not block (no I/O beyond
        a point read that an ASGI handler would make on the loop too). An exception it
        raises is logged; before ``respond`` the request then goes to the ASGI app, after
        it the response stands.
        """
        ...


def _content_length(headers: Headers) -> int | None:
    """The request's Content-Length, if it has one and no Transfer-Encoding (the parser has
    checked its syntax)."""
    length = None
    for name, value in headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            length = int(value)
    return length


class _HeadTooLarge(Exception):
    """Raised inside a parser callback; httptools then stops parsing this connection."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """One connection. Not thread-safe: uvicorn calls it on the event loop only."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._max_head = config.h11_max_incomplete_event_size
        self._head_timeout = float(config.timeout_keep_alive)
        self._head_bytes = 0
        self._head_too_large = False
        # The loop time by which the connection closes unless it has a complete request head
        # (or, when ``_idle``, a first byte of one), checked by one timer that moves on lazily:
        # a timer made and cancelled per request cost more than the rest of a quick answer's
        # bookkeeping.
        self._deadline: float | None = None
        self._idle = False
        self._timer: asyncio.TimerHandle | None = None
        self._senders: set[ZeroCopySend] = set()  # of cycles whose response is not over
        self._quick: QuickAnswer | None = app_state.get(QUICK)
        self._sendfile_threads = app_state.get(SENDFILE)
        self._answered = False  # the request being parsed was answered quickly
        self._body_into: BodyInto | None = None  # the latest request's, once its app opened it

    # -- the deadline for a complete request head (and for a quickly answered one's next) --

    def _start_deadline(self, *, idle: bool) -> None:
        self._deadline = self.loop.time() + self._head_timeout
        self._idle = idle
        if self._timer is None:
            self._timer = self.loop.call_at(self._deadline, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._timer = None
        if self._deadline is None:
            return
        if self.loop.time() < self._deadline:  # moved on since the timer was made
            self._timer = self.loop.call_at(self._deadline, self._deadline_passed)
            return
        self._deadline = None
        # A pipelined head may trickle in while an earlier response is still being sent:
        # cutting the connection would cut that response, so only an idle one is closed.
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_deadline(idle=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)
        for sender in list(self._senders):
            sender.close()
        if self._body_into is not None:
            self._body_into.lost()

    def on_message_begin(self) -> None:
        # uvicorn's, but the scope is built only for a request the ASGI app gets (_new_scope).
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self._answered = False
        self._head_bytes = 0
        if self._deadline is None or self._idle:  # counted from the connection's start or this first byte
            self._start_deadline(idle=False)

    def _new_scope(self) -> None:
        self.scope = {  # type: ignore[typeddict-item]
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,  # type: ignore[typeddict-item]
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
            "extensions": {ZEROCOPY: {}},
        }

    def on_headers_complete(self) -> None:
        self._deadline = None
        if self._quick is not None and self._answer_quickly(self._quick):
            return
        self._new_scope()
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not None and self.cycle is not before:
            # The app's task has not run yet: it will be handed this send.
            sender = ZeroCopySend(self.cycle, self.loop, self._senders.discard,
                                  lambda: len(self.server_state.tasks), self._sendfile_threads)
            self._senders.add(sender)
            self.cycle.send = sender  # type: ignore[method-assign]
            self.scope["extensions"][BODY_INTO] = {"open": partial(self._open_body_into, self.cycle)}

    # -- quick answers --------------------------------------------------------------------

    def _answer_quickly(self, quick: QuickAnswer) -> bool:
        """Offer the request to ``quick`` when uvicorn would start its ASGI task now and
        nothing but the response is left to do: no body, keep-alive, no upgrade."""
        if (
            (self.cycle is not None and not self.cycle.response_complete)  # pipelined: it waits its turn
            or self.flow.write_paused
            or self.transport.is_closing()  # shutting down, among others
            or not self.parser.should_keep_alive()
            or self.parser.get_http_version() != "1.1"
            or self.parser.should_upgrade()
            or (self.limit_concurrency is not None  # uvicorn answers 503 then
                and (len(self.connections) >= self.limit_concurrency or len(self.tasks) >= self.limit_concurrency))
            or self.root_path  # the app's paths would not be the URL's
            or not self.url.startswith(b"/")
            or not self.url.isascii()
        ):
            return False
        for name, _ in self.headers:
            if name == b"content-length" or name == b"transfer-encoding":
                return False
        path = self.url.partition(b"?")[0]
        if b"%" in path:
            return False
        try:
            return quick(self.parser.get_method().decode("ascii"), path.decode("ascii"), self.headers, self._respond)
        except Exception:
            log.exception("a quick answer failed")
            return self._answered

    def _respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Send a quick answer, then what uvicorn does when a response is complete."""
        if self._answered:
            raise RuntimeError("a request was answered twice")
        self._answered = True
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += (name, b": ", value, b"\r\n")
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        head += (b"\r\n", body)
        self.transport.write(b"".join(head))
        self.server_state.total_requests += 1
        # uvicorn's keep-alive timeout, which is this deadline's length: closed if idle so long.
        self._start_deadline(idle=True)

    # -- request bodies read into the app's buffers ------------------------------------

    def _open_body_into(self, cycle: RequestResponseCycle) -> BodyInto:
        """``imgproxy.body_into``'s opener for ``cycle``: its body pieces go to the reader from
        now on (while it is the latest request; a later one's head means its body has ended)."""
        if self._body_into is not None and self._body_into.cycle is cycle:
            raise RuntimeError("the request body is already open")
        length = None
        if cycle is self.cycle and cycle.more_body:  # still being received, and its the latest request
            length = _content_length(cycle.scope["headers"])
        self._body_into = BodyInto(cycle, self.loop, self, length)
        return self._body_into

    def body_received(self) -> None:
        """A body received raw (by ``BodyInto``) has ended: the transport is ours again, and
        the parser, which saw none of it, is replaced by a new one at the next request."""
        self.parser = httptools.HttpRequestParser(self)
        self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        if self._answered:  # a quickly answered request has none
            return
        reader = self._body_into
        if reader is not None and reader.cycle is self.cycle and not self.cycle.response_complete:
            reader.take(body)
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._answered:
            return
        super().on_message_complete()
        reader = self._body_into
        if reader is not None and reader.cycle is self.cycle:
            reader.end()

    # -- the size of a request head -----------------------------------------------------

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._max_head is not None and self._head_bytes > self._max_head:
            self._head_too_large = True
            raise _HeadTooLarge

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    # -- refusals -----------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """Called by uvicorn when the parser refuses the request (also after _HeadTooLarge)."""
        self._deadline = None
        if self._head_too_large:
            status, title = 431, "Request Header Fields Too Large"
            message = f"The request line and headers are larger than {self._max_head} bytes."
        else:
            status, title, message = 400, "Bad Request", f"{msg.rstrip('.')}: the HTTP request is malformed."
        body = error_response(status, title, message).body
        head = [f"HTTP/1.1 {status} {title}".encode("ascii")]
        head += [name + b": " + value for name, value in self.server_state.default_headers]
        head += [b"content-type: application/json", b"content-length: %d" % len(body), b"connection: close"]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.close()
