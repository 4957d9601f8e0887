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
image data on local disk goes to the socket with ``sendfile``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from .errors import error_response
from .zerocopy import ZEROCOPY, ZeroCopySend

__all__ = ["BoundedHttpToolsProtocol", "PROTOCOL"]

# What ``uvicorn.run(http=...)`` takes: an import string, so that worker processes load it too.
PROTOCOL = "imgproxy.protocol:BoundedHttpToolsProtocol"


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
        self._head_timer: asyncio.TimerHandle | None = None
        self._senders: set[ZeroCopySend] = set()  # of cycles whose response is not over

    # -- the deadline for a complete request head ---------------------------------------

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        # A pipelined head may trickle in while an earlier response is still being sent:
        # cutting the connection would cut that response, so only an idle one is closed.
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)
        for sender in list(self._senders):
            sender.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {ZEROCOPY: {}}
        self._head_bytes = 0
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not None and self.cycle is not before:
            # The app's task has not run yet: it will be handed this send.
            sender = ZeroCopySend(self.cycle, self.loop, self._senders.discard,
                                  lambda: len(self.server_state.tasks))
            self._senders.add(sender)
            self.cycle.send = sender  # type: ignore[method-assign]

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
        self._disarm_head_timer()
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
