"""An in-process image API that misbehaves on purpose, for the edge's fault-injection tests.

Neither imgproxy nor Glance can be told to stall mid-body once, answer 503 to every data
read, ignore ``Range``, or serve bytes that differ from the digests it shows; this server
can. Everything else the edge does is tested against a real imgproxy and the real Glance.

It serves ``GET /v2/images/{id}`` (the show: active, size, md5 ``checksum``, sha512
``os_hash_value`` of the *declared* data) and ``GET /v2/images/{id}/file`` by the image's
``fault``:

``ok``        honours one ``Range`` (206)
``stall``     the first data read sends half its body, then nothing until the server stops;
              later reads behave as ``ok``
``503``       answers 503 to every data read
``norange``   ignores ``Range``: 200 with the whole image
``corrupt``   serves ``data`` but shows the digests of other bytes

Every request is recorded as ``(method, path, Range)``; :attr:`FakeImageApi.body_bytes`
counts the data bytes sent.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

__all__ = ["FakeImageApi", "fake_image_api"]

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class FakeImage:
    data: bytes
    fault: str
    shown: bytes  # the bytes whose digests the show names
    reads: int = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        with owner.lock:
            owner.requests.append(("GET", self.path, self.headers.get("Range")))
        parts = self.path.split("?")[0].strip("/").split("/")
        image = owner.images.get(parts[2]) if len(parts) >= 3 and parts[:2] == ["v2", "images"] else None
        if image is None:
            return self._reply(404, b'{"error": "no such image"}')
        if len(parts) == 3:
            shown = image.shown
            record = {"id": parts[2], "status": "active", "size": len(image.data),
                      "checksum": hashlib.md5(shown).hexdigest(), "os_hash_algo": "sha512",
                      "os_hash_value": hashlib.sha512(shown).hexdigest(), "visibility": "public"}
            return self._reply(200, json.dumps(record).encode(), "application/json")
        with owner.lock:
            image.reads += 1
            first_read = image.reads == 1
        if image.fault == "503":
            return self._reply(503, b"upstream store is down\n")
        data, status, headers = image.data, 200, {}
        wanted = _RANGE.match(self.headers.get("Range", ""))
        if wanted and image.fault != "norange":
            first = int(wanted.group(1))
            last = min(int(wanted.group(2)) if wanted.group(2) else len(data) - 1, len(data) - 1)
            status, data = 206, data[first:last + 1]
            headers["Content-Range"] = f"bytes {first}-{last}/{len(image.data)}"
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if image.fault == "stall" and first_read:
            self._send(data[: len(data) // 2])
            owner.stopping.wait(60)
            self.close_connection = True
            return
        self._send(data)

    def _send(self, data: bytes) -> None:
        for i in range(0, len(data), 65536):
            piece = data[i:i + 65536]
            try:
                self.wfile.write(piece)
            except OSError:
                self.close_connection = True
                return
            with self.server.owner.lock:
                self.server.owner.body_bytes += len(piece)

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: FakeImageApi


class FakeImageApi:
    """The fake on ``127.0.0.1:port``; :meth:`add` an image, point an edge at :attr:`url`."""

    def __init__(self) -> None:
        self.images: dict[str, FakeImage] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.body_bytes = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-image-api", daemon=True)

    def add(self, image_id: str, data: bytes, fault: str = "ok") -> None:
        shown = os.urandom(len(data)) if fault == "corrupt" else data
        self.images[image_id] = FakeImage(data, fault, shown)

    def data_reads(self, image_id: str) -> list[str | None]:
        """The ``Range`` headers of the data reads of ``image_id`` so far."""
        with self.lock:
            return [r for _, path, r in self.requests if path.startswith(f"/v2/images/{image_id}/file")]

    def start(self) -> FakeImageApi:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


@pytest.fixture
def fake_image_api() -> Iterator[FakeImageApi]:
    server = FakeImageApi().start()
    try:
        yield server
    finally:
        server.stop()
