"""Fixtures: a real Swift all-in-one (proxy, account, container, object servers) on loopback.

Import them into a test module (``from tests.swift_fixtures import swift_server  # noqa: F401``).
One Swift serves the whole test session (it takes seconds to start); tests use their own
containers. It is stopped by PID at the end of the session, also when tests fail.

Swift runs from its own venv (``python -m bench setup-swift``; ``.ci/run`` installs it).
Without that venv the Swift tests fail, saying how to install it: a skip would let the
README's test command pass with the Swift guarantees unchecked.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.servers.swift import SwiftServer, swift_venv, swift_venv_ready

__all__ = ["swift_server", "SwiftServer", "start_swift", "swift_api", "new_container", "object_names", "store_options"]


def start_swift(root: Path, **kwargs: object) -> SwiftServer:
    """Start a Swift under ``root`` (fails the test, saying why, when its venv is missing)."""
    if not swift_venv_ready():
        pytest.fail(f"the Swift venv is not installed at {swift_venv()}; run `python -m bench setup-swift` "
                    "(~30 s; .ci/run does)", pytrace=False)
    return SwiftServer(root, **kwargs).start()  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def swift_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwiftServer]:
    """One Swift for the session: ``url``, ``auth_url``, ``user``/``key``, ``s3``; stopped by PID."""
    server = start_swift(tmp_path_factory.mktemp("swift"))
    try:
        yield server
    finally:
        server.stop()


def swift_api(server: SwiftServer) -> httpx.Client:
    """A plain Swift API client (tempauth token, account URL as base): seeds and inspects
    the store without the backend under test."""
    return httpx.Client(base_url=server.storage_url, headers={"X-Auth-Token": server.token()}, timeout=30)


def new_container(api: httpx.Client, stem: str = "t") -> str:
    """Create a fresh container and return its name."""
    name = f"{stem}-{uuid.uuid4().hex[:10]}"
    response = api.put(f"/{name}")
    assert response.status_code in (201, 202), response.text
    return name


def object_names(api: httpx.Client, container: str) -> set[str]:
    """Every object in ``container`` (segments of large objects included)."""
    response = api.get(f"/{container}", params={"format": "json"})
    assert response.status_code in (200, 204)
    return {entry["name"] for entry in response.json()} if response.status_code == 200 else set()


def store_options(server: SwiftServer, **more: Any) -> dict[str, Any]:
    """The ``[swift]`` table of a store in ``server`` (tempauth)."""
    return {"auth_url": server.auth_url, "user": server.user, "key": server.key, "timeout": 10, **more}
