"""Upload bodies read straight into the app's buffers (``imgproxy.body_into``), over real sockets.

The protocol copies body pieces into the buffer the upload lends it, keeps what arrives
while none is lent, answers ``Expect: 100-continue``, and leaves the connection ready for
the next request. Each test sends bytes by hand, so the pieces arrive split where a client
library would never split them.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable

import httpx

from tests.helpers import payload
from tests.server import ServerProcess
from tests.test_api_data import create_image, status_of, stored_names

MiB = 1024 * 1024


def _head(image_id: str, length: int, *extra: str) -> bytes:
    lines = [f"PUT /v2/images/{image_id}/file HTTP/1.1", "Host: x", "Content-Type: application/octet-stream",
             f"Content-Length: {length}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class _Responses:
    """The responses that arrive on one socket, in order. Bytes of the next response that come
    in the same read as this one's end are kept for it (pipelined answers often do)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = b""

    def _more(self) -> None:
        got = self.sock.recv(65536)
        assert got, f"connection closed after {self.data!r}"
        self.data += got

    def next(self) -> tuple[bytes, bytes]:
        """The next response's status line and body (Content-Length framed)."""
        while b"\r\n\r\n" not in self.data:
            self._more()
        head, self.data = self.data.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self.data) < length:
            self._more()
        body, self.data = self.data[:length], self.data[length:]
        return head.split(b"\r\n")[0], body


def test_a_dribbled_body_with_100_continue_is_stored_whole(server_factory: Callable[..., ServerProcess]) -> None:
    # Small chunks (4 of 64 KiB per piece buffer): pieces straddle buffers, and pauses make
    # the body arrive both while a buffer is lent and while none is.
    proc = server_factory(noauth=True, config={"chunk_size": 256 * 1024})
    data = payload(3 * MiB + 12345, 21)
    with httpx.Client(base_url=proc.url, timeout=30) as client:
        image_id = create_image(client)
        with socket.create_connection(("127.0.0.1", proc.port), timeout=30) as sock:
            responses = _Responses(sock)
            sock.sendall(_head(image_id, len(data), "Expect: 100-continue"))
            status, _ = responses.next()
            assert status == b"HTTP/1.1 100 Continue"
            sizes = [1, 4095, 70_000, 333_333, 1_000_000]
            sent = 0
            while sent < len(data):
                size = sizes[sent % len(sizes)]
                sock.sendall(data[sent:sent + size])
                sent += size
                if sent % 3 == 0:
                    time.sleep(0.01)
            status, _ = responses.next()
            assert status == b"HTTP/1.1 204 No Content"
            # The connection carries the next request: the parser is where the body ended.
            sock.sendall(f"GET /v2/images/{image_id} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            status, body = responses.next()
            assert status == b"HTTP/1.1 200 OK"
            assert b'"status": "active"' in body or b'"status":"active"' in body
        shown = client.get(f"/v2/images/{image_id}").json()
        assert shown["size"] == len(data)
        assert shown["checksum"] == hashlib.md5(data).hexdigest()
        assert shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
        assert client.get(f"/v2/images/{image_id}/file").content == data


def test_a_body_sent_with_its_head_and_pipelined_requests(server_factory: Callable[..., ServerProcess]) -> None:
    # Head, whole body and a second request in one write: the body is in uvicorn's buffer
    # before the upload opens it, and the next request must not be taken as body.
    proc = server_factory(noauth=True)
    data = payload(200_000, 22)
    with httpx.Client(base_url=proc.url, timeout=30) as client:
        image_id = create_image(client)
        with socket.create_connection(("127.0.0.1", proc.port), timeout=30) as sock:
            responses = _Responses(sock)
            sock.sendall(_head(image_id, len(data)) + data + f"GET /v2/images/{image_id} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert responses.next()[0] == b"HTTP/1.1 204 No Content"
            status, body = responses.next()
            assert status == b"HTTP/1.1 200 OK"
            assert hashlib.md5(data).hexdigest().encode() in body
        assert client.get(f"/v2/images/{image_id}/file").content == data


def test_a_client_gone_between_pieces_leaves_the_image_queued(server_factory: Callable[..., ServerProcess]) -> None:
    proc = server_factory(noauth=True, config={"chunk_size": 256 * 1024})
    data = payload(2 * MiB, 23)
    with httpx.Client(base_url=proc.url, timeout=30) as client:
        image_id = create_image(client)
        sock = socket.create_connection(("127.0.0.1", proc.port), timeout=30)
        sock.sendall(_head(image_id, 2 * len(data)) + data)
        deadline = time.monotonic() + 15
        while status_of(client, image_id) != "saving" and time.monotonic() < deadline:
            time.sleep(0.05)
        sock.close()
        deadline = time.monotonic() + 15
        while status_of(client, image_id) != "queued" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status_of(client, image_id) == "queued"
        assert stored_names(proc, image_id) == []
        assert client.put(f"/v2/images/{image_id}/file", content=data,
                          headers={"Content-Type": "application/octet-stream"}).status_code == 204
        assert client.get(f"/v2/images/{image_id}/file").content == data


def test_a_body_refused_midway_leaves_nothing_and_the_connection_is_not_confused(
        server_factory: Callable[..., ServerProcess]) -> None:
    # Declared qcow2, sent raw bytes: 415 as soon as the inspector is certain, while the body
    # is still coming. The server then closes, or takes the next request, never the rest of
    # the body as a request.
    proc = server_factory(noauth=True)
    data = payload(3 * MiB, 24)
    with httpx.Client(base_url=proc.url, timeout=30) as client:
        image_id = create_image(client, disk_format="qcow2")
        with socket.create_connection(("127.0.0.1", proc.port), timeout=30) as sock:
            responses = _Responses(sock)
            sock.sendall(_head(image_id, len(data)))
            try:
                sock.sendall(data)
                sock.sendall(f"GET /v2/images/{image_id} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed after refusing: also right
            status, body = responses.next()
            assert status == b"HTTP/1.1 415 Unsupported Media Type"
            assert b"qcow2" in body
            rest = responses.data  # what came with the 415, else the next read
            if not rest:
                try:
                    rest = sock.recv(65536)
                except ConnectionResetError:
                    rest = b""
            assert rest == b"" or rest.startswith(b"HTTP/1.1 200 OK"), rest[:200]
        assert status_of(client, image_id) == "queued"
        assert stored_names(proc, image_id) == []
