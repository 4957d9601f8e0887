"""Servers the suite needs on this machine: their absence fails a test with the reason.

The tests that carry the herd, locations, store and harness guarantees run against real
nginx and the real Glance. A skip would let the README's test command pass while those
guarantees went unchecked, so a missing server is a failure that says what to install.
"""

from __future__ import annotations

import pytest

from bench.servers.nginx import NginxUnavailable, nginx_binary
from bench.systems.glance import venv_ready

__all__ = ["require_nginx", "require_glance_venv"]


def require_nginx() -> str:
    """The nginx binary; fails the test when nginx is not installed."""
    try:
        return nginx_binary()
    except NginxUnavailable as exc:
        pytest.fail(f"{exc}: install it (apt-get install nginx; .ci/run does) to run this test", pytrace=False)


def require_glance_venv() -> None:
    """Fails the test when the harness's Glance venv is missing."""
    if not venv_ready():
        pytest.fail("the real Glance is not installed: run `python -m bench setup-glance` (.ci/run does)",
                    pytrace=False)
