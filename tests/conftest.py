"""Shared fixtures: a real imgproxy server on a loopback port, and tokens for it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.server import ServerProcess


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server in tokens mode, shared by the tests that only need the default settings.

    Tests must create their own images (each test's names are unique) and never
    assume the listing is empty.
    """
    proc = ServerProcess(tmp_path_factory.mktemp("shared") / "data", config={"image_size_cap": 64 * 1024 * 1024})
    with proc:
        yield proc


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers with particular settings; each is stopped when the test ends."""
    started: list[ServerProcess] = []

    def make(**kwargs: object) -> ServerProcess:
        proc = ServerProcess(tmp_path / f"data{len(started)}", **kwargs)  # type: ignore[arg-type]
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def make_token(server: ServerProcess) -> Callable[..., str]:
    """``make_token(project, role)`` adds a token to the shared server's tokens file."""
    from imgproxy.tokens import create_token

    def make(project: str, role: str = "member") -> str:
        return create_token(server.data_dir / "tokens.json", project=project, roles=[role])

    return make


@pytest.fixture(scope="session")
def admin(server: ServerProcess) -> httpx.Client:
    client = httpx.Client(base_url=server.url, headers={"X-Auth-Token": server.admin_token}, timeout=30)
    yield client
    client.close()


@pytest.fixture(scope="session")
def client_for(server: ServerProcess, make_token: Callable[..., str]) -> Iterator[Callable[..., httpx.Client]]:
    """``client_for(project, role="member")``: an httpx client with a fresh token for that project."""
    clients: list[httpx.Client] = []

    def make(project: str, role: str = "member") -> httpx.Client:
        c = httpx.Client(base_url=server.url, headers={"X-Auth-Token": make_token(project, role)}, timeout=30)
        clients.append(c)
        # The server notices a new token when it next re-reads the tokens file.
        deadline = time.monotonic() + 10
        while c.get("/v2/schemas/member").status_code == 401 and time.monotonic() < deadline:
            time.sleep(0.05)
        return c

    yield make
    for c in clients:
        c.close()
