"""A small in-process HTTP server on a chosen loopback address, for web-download's redirect tricks.

Why not nginx: these tests need a server bound to 127.0.0.2 (the address a test opens with
``allowed_networks``) that redirects to a URL named in the request (``/r?to=<url>``), and
that records the ``Host`` header of each request; nginx listens on 127.0.0.1 in the shared
fixtures and cannot redirect to arbitrary spellings without a config per case.

``GET /r?to=URL`` -> 302 to URL; ``GET /chain/N`` -> 302 to ``/chain/N-1`` (``/chain/0``
serves the data); ``GET /data`` -> 200 with :attr:`RedirectServer.data`.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

__all__ = ["RedirectServer"]


class RedirectServer:
    """Start with :meth:`start`, stop with :meth:`stop` (its thread ends with it)."""

    def __init__(self, host: str = "127.0.0.2", data: bytes = b"") -> None:
        self.host = host
        self.data = data
        self.requests: list[tuple[str, str]] = []  # (path, Host header)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.requests.append((self.path, self.headers.get("Host", "")))
                parts = urlsplit(self.path)
                if parts.path == "/r":
                    self._redirect(parse_qs(parts.query)["to"][0])
                elif parts.path.startswith("/chain/"):
                    left = int(parts.path.rsplit("/", 1)[1])
                    if left > 0:
                        self._redirect(f"/chain/{left - 1}")
                    else:
                        self._send(outer.data)
                elif parts.path == "/data":
                    self._send(outer.data)
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def _redirect(self, to: str) -> None:
                self.send_response(302)
                self.send_header("Location", to)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _send(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self.port = int(self._server.server_address[1])
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> "RedirectServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
