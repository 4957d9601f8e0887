"""The fault-injecting HTTP server (bench/servers/faulty.py) as a pytest fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.servers.faulty import FaultyServer

__all__ = ["FaultyServer", "faulty_server"]


@pytest.fixture
def faulty_server() -> Iterator[FaultyServer]:
    server = FaultyServer().start()
    try:
        yield server
    finally:
        server.stop()
