"""The small helpers test modules share: names, payloads, images over HTTP, polling, error shapes.

One copy of each, so a change in what the API answers is made in one place.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

__all__ = ["project", "unique", "payload", "create", "drop_from_cache", "wait_for", "is_json_error"]

T = TypeVar("T")


def project() -> str:
    """A project id of its own, so tests on a shared server see only their images."""
    return f"proj-{uuid.uuid4().hex[:8]}"


def unique(prefix: str) -> str:
    """A name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating test bytes (so a misplaced range cannot pass)."""
    return random.Random(seed).randbytes(size)


def create(client: httpx.Client, **body: object) -> dict[str, Any]:
    """Create an image (201 expected); its record."""
    r = client.post("/v2/images", json=body)
    assert r.status_code == 201, r.text
    record: dict[str, Any] = r.json()
    return record


def drop_from_cache(client: httpx.Client, image_id: str) -> None:
    """Evict the image's chunks (admin), so the next read must come from its store."""
    assert client.delete(f"/v2/cache/{image_id}").status_code in (200, 204)


def wait_for(probe: Callable[[], T], timeout: float = 15.0, interval: float = 0.05) -> T:
    """Poll ``probe`` until it returns something truthy (background work finishes
    asynchronously); return its last value, truthy or not, so the caller asserts on it."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = probe()
    return value


def is_json_error(r: httpx.Response, status: int) -> dict[str, Any]:
    """Assert ``r`` is the API's JSON error with ``status``; return the error object."""
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = r.json()["error"]
    assert error["code"] == status and error["title"] and error["message"]
    return error
