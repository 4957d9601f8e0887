"""Image show answered by the protocol (imgproxy.shortcut): on the wire as the app answers it.

The protocol answers ``GET /v2/images/{id}`` itself when it can, and hands every other
request to the app; a GET carrying ``Content-Length: 0`` is one it always hands on (it
answers only requests without a body), so it shows what the app alone would send. These
tests talk raw HTTP/1.1 over one socket, as a client that pipelines does.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx

from tests.server import ServerProcess
from tests.test_connection_limits import closed_by_server

SAME_ID = "req-shortcut-fixed-id"


def _request(path: str, token: str | None, *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", f"X-Openstack-Request-Id: {SAME_ID}",
             *([f"X-Auth-Token: {token}"] if token else []), *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _responses(sock: socket.socket, count: int, timeout: float = 10.0) -> list[tuple[bytes, bytes]]:
    """``count`` responses read from ``sock``: ``(head, body)`` each, in the order sent."""
    sock.settimeout(timeout)
    data, found = b"", list[tuple[bytes, bytes]]()
    while len(found) < count:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end]
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)  # none: a 204
            if len(data) >= end + 4 + length:
                found.append((head, data[end + 4:end + 4 + length]))
                data = data[end + 4 + length:]
                continue
        more = sock.recv(65536)
        assert more, f"the server closed the connection after {len(found)} of {count} responses"
        data += more
    return found


def _without_date(head: bytes) -> list[bytes]:
    return [line for line in head.split(b"\r\n") if not line.lower().startswith(b"date:")]


def _image(api: httpx.Client, name: str) -> str:
    r = api.post("/v2/images", json={"name": name, "disk_format": "raw", "container_format": "bare"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_a_show_reads_the_same_whichever_layer_answers(server: ServerProcess, admin: httpx.Client) -> None:
    image_id = _image(admin, "shortcut-same")
    token = admin.headers["x-auth-token"]
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(_request(f"/v2/images/{image_id}", token))
        (quick,) = _responses(sock, 1)
        sock.sendall(_request(f"/v2/images/{image_id}", token, "Content-Length: 0"))
        (app,) = _responses(sock, 1)
    assert _without_date(quick[0]) == _without_date(app[0])
    assert quick[0].startswith(b"HTTP/1.1 200 OK\r\n") and quick[1] == app[1]
    assert httpx.Response(200, content=quick[1]).json()["id"] == image_id


def test_pipelined_requests_are_answered_in_order(server: ServerProcess, admin: httpx.Client) -> None:
    # Shows the protocol answers, between requests the app answers (a list, a missing image,
    # a show behind them), all sent in one write.
    first, second = _image(admin, "shortcut-pipe-1"), _image(admin, "shortcut-pipe-2")
    missing = "00000000-0000-4000-8000-000000000000"
    token = admin.headers["x-auth-token"]
    paths = [f"/v2/images/{first}", "/v2/images?limit=1", f"/v2/images/{second}", f"/v2/images/{missing}",
             f"/v2/images/{first}", f"/v2/images/{second}"]
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"".join(_request(path, token) for path in paths))
        answers = _responses(sock, len(paths))
    statuses = [head.split(b" ", 2)[1] for head, _ in answers]
    assert statuses == [b"200", b"200", b"200", b"404", b"200", b"200"]
    ids = [httpx.Response(200, content=body).json().get("id") for _, body in answers]
    assert ids[0] == ids[4] == first and ids[2] == ids[5] == second
    assert b'"images":[' in answers[1][1] and missing.encode() in answers[3][1]


def test_a_connection_idle_after_a_show_is_closed_after_keepalive_timeout(
        server_factory: Callable[..., ServerProcess]) -> None:
    proc = server_factory(noauth=True, config={"keepalive_timeout": 1})
    with httpx.Client(base_url=proc.url) as api:
        image_id = _image(api, "shortcut-idle")
    with socket.create_connection(("127.0.0.1", proc.port)) as sock:
        for _ in range(3):  # kept alive between requests
            sock.sendall(_request(f"/v2/images/{image_id}", None))
            (answer,) = _responses(sock, 1)
            assert answer[0].startswith(b"HTTP/1.1 200 ")
        assert closed_by_server(sock, within=15)


def test_a_request_pipelined_behind_a_show_is_not_cut_by_its_keepalive_timeout(
        server_factory: Callable[..., ServerProcess]) -> None:
    # An upload whose body pauses longer than the keep-alive timeout, sent in the same write
    # as a show: the show's keep-alive deadline must not close the connection under it.
    proc = server_factory(noauth=True, config={"keepalive_timeout": 1})
    with httpx.Client(base_url=proc.url) as api:
        shown, target = _image(api, "shortcut-shown"), _image(api, "shortcut-upload")
    data = b"x" * 1000
    upload = (f"PUT /v2/images/{target}/file HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", proc.port)) as sock:
        sock.sendall(_request(f"/v2/images/{shown}", None) + upload + data[:500])
        time.sleep(2.5)
        sock.sendall(data[500:])
        show, stored = _responses(sock, 2)
    assert show[0].startswith(b"HTTP/1.1 200 ") and stored[0].startswith(b"HTTP/1.1 204 "), stored
    with httpx.Client(base_url=proc.url) as api:
        assert api.get(f"/v2/images/{target}/file").content == data


def test_a_show_past_max_connections_is_503(server_factory: Callable[..., ServerProcess]) -> None:
    proc = server_factory(noauth=True, config={"max_connections": 2, "keepalive_timeout": 60})
    with httpx.Client(base_url=proc.url) as api:
        image_id = _image(api, "shortcut-limit")
    with socket.create_connection(("127.0.0.1", proc.port)), socket.create_connection(("127.0.0.1", proc.port)):
        with socket.create_connection(("127.0.0.1", proc.port)) as third:
            time.sleep(0.2)  # the server has taken all three connections
            third.sendall(_request(f"/v2/images/{image_id}", None))
            (answer,) = _responses(third, 1)
    assert answer[0].startswith(b"HTTP/1.1 503 "), answer
