"""Fixtures: a real Keystone (PyPI ``keystone``, sqlite, fernet tokens) on loopback.

Import them into a test module (``from tests.keystone_fixtures import keystone  # noqa: F401``).
One Keystone serves the whole session (it takes ~15 s to create its database and bootstrap);
tests create their own projects and users. It is stopped by PID at the end of the session,
also when tests fail.

Keystone runs from its own venv (``python -m bench setup-keystone``; ``.ci/run`` installs it).
Without that venv the Keystone tests fail, saying how to install it: a skip would let the
README's test command pass with the Keystone guarantees unchecked.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.servers.keystone import KeystoneServer, keystone_venv, keystone_venv_ready

__all__ = ["keystone", "KeystoneServer", "start_keystone", "imgproxy_keystone_config", "SERVICE_USER",
           "SERVICE_PASSWORD", "new_user"]

# The user imgproxy validates tokens as (keystonemiddleware's [keystone_authtoken] user).
SERVICE_USER, SERVICE_PASSWORD = "imgproxy", "imgproxy-secret"


def start_keystone(root: Path, **kwargs: object) -> KeystoneServer:
    """Start a Keystone under ``root`` (fails the test, saying why, when its venv is missing)."""
    if not keystone_venv_ready():
        pytest.fail(f"the Keystone venv is not installed at {keystone_venv()}; run `python -m bench setup-keystone` "
                    "(~60 s; .ci/run does)", pytrace=False)
    return KeystoneServer(root, **kwargs).start()  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def keystone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeystoneServer]:
    """One Keystone for the session, with imgproxy's service user (role ``service`` in project
    ``service``); stopped by PID."""
    server = start_keystone(tmp_path_factory.mktemp("keystone"))
    try:
        server.create_user(SERVICE_USER, SERVICE_PASSWORD, "service", ["service"])
        yield server
    finally:
        server.stop()


def imgproxy_keystone_config(keystone: KeystoneServer, **extra: object) -> dict[str, object]:
    """Settings for an imgproxy that validates tokens with ``keystone``."""
    return {"auth": "keystone", "keystone_url": keystone.url, "keystone_user": SERVICE_USER,
            "keystone_password": SERVICE_PASSWORD, "keystone_project": "service", **extra}


def new_user(keystone: KeystoneServer, project: str, roles: list[str]) -> tuple[str, str]:
    """A new user with ``roles`` on ``project``; returns ``(name, password)``."""
    name = f"u-{uuid.uuid4().hex[:10]}"
    password = uuid.uuid4().hex
    keystone.create_user(name, password, project, roles)
    return name, password
