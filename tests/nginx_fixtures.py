"""Fixtures: a real nginx on a loopback port serving a temp dir, as an http store.

Import the fixtures into a test module (``from tests.nginx_fixtures import
nginx_store  # noqa: F401``). Each nginx is stopped by PID at teardown. Tests
seed objects by writing files into the served root (:meth:`NginxStore.put`) and
count what nginx sent with its access log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.servers.nginx import NginxServer
from tests.requirements import require_nginx

__all__ = ["NginxStore", "nginx_store", "nginx_store_factory", "start_nginx_store"]

# ``/moved/<name>`` redirects to ``/<name>``, so redirects are tested on a real server too.
_BODY = """\
        root {root};
        location /moved/ {{ rewrite ^/moved/(.*)$ /$1 redirect; }}
        location / {{ {limit} }}
"""


@dataclass
class NginxStore:
    """A running nginx serving ``root``; ``server`` is the process handle."""

    server: NginxServer
    root: Path

    def url(self, name: str) -> str:
        return f"{self.server.url}/{name}"

    def put(self, name: str, data: bytes) -> str:
        """Write object ``name`` (atomically, so nginx never serves half a file); return its URL."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return self.url(name)

    def log_lines(self) -> list[str]:
        return self.server.requests()

    def wait_for_log(self, count: int, timeout: float = 5.0) -> list[str]:
        """Return the access log once it has ``count`` lines.

        nginx writes a line right after the last byte leaves, which can be a moment
        after the client has read it; this waits for the line, it asserts no timing.
        """
        deadline = time.monotonic() + timeout
        lines = self.log_lines()
        while len(lines) < count and time.monotonic() < deadline:
            time.sleep(0.01)
            lines = self.log_lines()
        return lines


def start_nginx_store(prefix: Path, *, limit_rate: str | None = None) -> NginxStore:
    """Start nginx with its files under ``prefix`` and serving ``prefix/root``; fails if no nginx."""
    require_nginx()
    root = prefix / "root"
    root.mkdir(parents=True, exist_ok=True)
    limit = f"limit_rate {limit_rate};" if limit_rate else ""
    server = NginxServer(prefix / "nginx", _BODY.format(root=root, limit=limit))
    server.start()
    return NginxStore(server, root)


@pytest.fixture(scope="module")
def nginx_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxStore]:
    """One plain nginx store shared by a test module (compare log lines and byte counts as deltas)."""
    store = start_nginx_store(tmp_path_factory.mktemp("nginx"))
    try:
        yield store
    finally:
        store.server.stop()


@pytest.fixture
def nginx_store_factory(tmp_path: Path) -> Iterator[Callable[..., NginxStore]]:
    """``make(limit_rate="200k")``: nginx stores for one test, stopped when it ends."""
    started: list[NginxStore] = []

    def make(*, limit_rate: str | None = None) -> NginxStore:
        store = start_nginx_store(tmp_path / f"nginx{len(started)}", limit_rate=limit_rate)
        started.append(store)
        return store

    yield make
    for store in started:
        store.server.stop()
