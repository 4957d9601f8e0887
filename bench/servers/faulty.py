"""An in-process HTTP server that misbehaves on purpose, for fault-injection tests.

Real servers (nginx) cannot be told to cut a body short, stall mid-body, answer
503, ignore ``Range``, flip a byte or hide an object's length; this one can. Everything else
(whole and ranged reads, sizes, 404s) is tested against real nginx.

The path picks the behaviour: ``/<fault>/<name>`` serves object ``name`` with
``fault`` one of:

``ok``        honours a single ``Range`` (206 + ``Content-Range``), HEAD has a length
``truncate``  declares the full length, sends half the body, closes the connection
``stall``     sends headers and half the body, then sends nothing until the server stops
``503``       answers 503 to every request
``norange``   ignores ``Range``: always 200 with the whole object
``nolength``  HEAD without ``Content-Length``; GET without ``Range`` is chunked
``redirect``  302 to ``/ok/<name>``
``loop``      302 to itself, forever
``wrong``     like ``ok``, with one byte of every answer flipped
``reset``     sends headers and half the body, then resets the connection (RST)
``drip``      like ``ok``, 4 KiB at a time with a pause between them (a slow-drip server)
``x``         whatever :attr:`FaultyServer.faults` says for ``name`` now (default ``ok``), so a
              test can break and heal one URL while the service keeps reading it

Runs ``http.server`` in a thread on a loopback port; :meth:`FaultyServer.stop`
(called by the fixture) releases stalled handlers and closes the socket.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["FaultyServer", "FAULTS"]

FAULTS = ("ok", "truncate", "stall", "503", "norange", "nolength", "wrong", "reset", "drip")

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output quiet; requests are recorded in FaultyServer.requests

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, *, head: bool) -> None:
        owner = self.server.owner
        owner.requests.append((self.command, self.path, self.headers.get("Range")))
        _, fault, name = (self.path.split("/", 2) + ["", ""])[:3]
        if fault == "x":
            fault = owner.faults.get(name, "ok")
        if fault == "503":
            return self._reply(503, b"store is down\n")
        if fault == "redirect":
            return self._reply(302, b"", {"Location": f"/ok/{name}"})
        if fault == "loop":
            return self._reply(302, b"", {"Location": self.path})
        data = owner.objects.get(name)
        if data is None:
            return self._reply(404, b"no such object\n")
        status, body, headers = 200, data, {"Accept-Ranges": "bytes"}
        wanted = _RANGE.match(self.headers.get("Range", ""))
        if fault == "norange":
            headers = {}
        elif wanted:
            first = int(wanted.group(1))
            last = min(int(wanted.group(2)) if wanted.group(2) else len(data) - 1, len(data) - 1)
            if first >= len(data):
                return self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            status, body = 206, data[first : last + 1]
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
        if fault == "nolength":
            if head or status == 206:
                # HEAD gives no length (like many dynamic servers); ranged GETs still do.
                return self._reply(status, b"" if head else body, headers, length=not head)
            return self._chunked(body)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        if fault == "truncate":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if fault == "stall":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            owner.stopping.wait(60)
            self.close_connection = True
            return
        if fault == "reset":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            # SO_LINGER 0: close() sends RST instead of FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        if fault == "wrong" and body:
            flipped = bytearray(body)
            flipped[len(flipped) // 2] ^= 0xFF
            body = bytes(flipped)
        if fault == "drip":
            for i in range(0, len(body), 4096):
                if owner.stopping.wait(0.002):
                    break
                self.wfile.write(body[i : i + 4096])
            return
        self.wfile.write(body)

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None, *, length: bool = True) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        else:
            # Say so: a client must not reuse a connection the server is about to close.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _chunked(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(0, len(body), 100_000):
            piece = body[i : i + 100_000]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: FaultyServer

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that go away mid-answer are what these tests make happen


class FaultyServer:
    """The fault server on ``127.0.0.1:port``; put objects in :attr:`objects`.

    :attr:`requests` records ``(method, path, Range header)`` of every request.
    """

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.faults: dict[str, str] = {}  # name -> fault, for ``/x/<name>``
        self.requests: list[tuple[str, str, str | None]] = []
        self.stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="faulty-http", daemon=True)

    def location(self, fault: str, name: str) -> str:
        return f"{self.url}/{fault}/{name}"

    def start(self) -> FaultyServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()  # wakes stalled handlers first, so shutdown does not wait on them
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
