"""Connection limits of ``imgproxy serve``: idle, slow and oversized clients cannot hold the service.

Each test starts its own server with small limits and talks to it over raw sockets, the way
such clients behave.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import httpx
import pytest

from imgproxy.settings import SettingsError, load_settings
from tests.server import ServerProcess


@contextmanager
def idle_connections(server: ServerProcess, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that send nothing; closed on exit."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.create_connection(("127.0.0.1", server.port))) for _ in range(count)]
        yield socks


def versions_status(server: ServerProcess) -> int:
    # A fresh connection per request: a pooled one would not count as a new connection.
    with httpx.Client(base_url=server.url, timeout=10) as c:
        return c.get("/versions").status_code


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` within ``within`` seconds (nothing is sent on it)."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_connections_past_max_connections_get_503_until_they_close(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(noauth=True, config={"max_connections": 3, "keepalive_timeout": 60})
    with idle_connections(server, 2):
        assert versions_status(server) == 200  # the third connection is served
    with idle_connections(server, 3):
        assert versions_status(server) == 503  # the fourth is not
        assert versions_status(server) == 503
    deadline = time.monotonic() + 10
    while versions_status(server) != 200:  # the server notices the closed sockets
        assert time.monotonic() < deadline, "the service did not recover after the idle connections closed"
        time.sleep(0.05)
    with idle_connections(server, 2):
        assert versions_status(server) == 200


def test_idle_connections_are_closed_after_keepalive_timeout(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(noauth=True, config={"max_connections": 3, "keepalive_timeout": 1})
    with idle_connections(server, 3) as socks:
        assert versions_status(server) == 503
        assert all(closed_by_server(s, within=15) for s in socks)
        assert versions_status(server) == 200


def test_a_request_head_sent_slowly_is_cut(server_factory: Callable[..., ServerProcess]) -> None:
    """Slowloris: a head that never ends, a byte at a time, keeps no connection for long."""
    server = server_factory(noauth=True, config={"keepalive_timeout": 1})
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /versions HTTP/1.1\r\nHost: x\r\n")
        deadline = time.monotonic() + 15
        with pytest.raises(OSError):  # EPIPE or ECONNRESET once the server has closed it
            while time.monotonic() < deadline:
                sock.sendall(b"X-Slow: 1\r\n")
                time.sleep(0.2)
                sock.settimeout(0.01)
                try:
                    if sock.recv(1) == b"":
                        raise ConnectionResetError("closed by the server")
                except TimeoutError:
                    pass
    assert versions_status(server) == 200


def test_a_huge_request_head_is_refused_without_reading_it_all(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(noauth=True, config={"max_request_head": 64 * 1024})
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /versions HTTP/1.1\r\nHost: x\r\n")
        line = b"X-Big: " + b"b" * 8000 + b"\r\n"
        with pytest.raises(OSError):  # the server stops reading long before 64 MiB
            for _ in range(64 * 1024 * 1024 // len(line)):
                sock.sendall(line)
        answer = b""
        try:
            while piece := sock.recv(65536):
                answer += piece
        except OSError:
            pass
    if answer:  # the 431 may be lost to the reset that cut the sender short
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431 ")
        assert json.loads(body)["error"]["code"] == 431
    assert versions_status(server) == 200


def test_a_huge_url_is_431_json(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(noauth=True, config={"max_request_head": 64 * 1024})
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /v2/images?name=" + b"n" * 100_000 + b" HTTP/1.1\r\nHost: x\r\nX-Project-Id: p\r\n\r\n")
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ") and b"content-type: application/json" in head
    assert json.loads(body)["error"]["code"] == 431
    assert versions_status(server) == 200


@pytest.mark.parametrize(
    ("key", "value"),
    [("max_connections", "0"), ("listen_backlog", "0"), ("keepalive_timeout", "0"), ("max_request_head", "1024")],
)
def test_limit_settings_are_checked(key: str, value: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(environ={f"IMGPROXY_{key.upper()}": value})
    assert err.value.key == key
