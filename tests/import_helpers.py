"""Helpers for the import tests: create, stage, import, and wait for the import's task to end."""

from __future__ import annotations

import time
from typing import Any

import httpx

__all__ = ["new_image", "stage", "start_import", "wait_task", "web_download"]


def new_image(client: httpx.Client, **fields: Any) -> str:
    r = client.post("/v2/images", json={"disk_format": "raw", "container_format": "bare", **fields})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def stage(client: httpx.Client, image_id: str, data: bytes) -> httpx.Response:
    return client.put(f"/v2/images/{image_id}/stage", content=data,
                      headers={"Content-Type": "application/octet-stream"})


def start_import(client: httpx.Client, image_id: str, method: str, **body: Any) -> httpx.Response:
    extra = {k: v for k, v in body.items() if k in ("stores", "all_stores", "all_stores_must_succeed")}
    fields = {k: v for k, v in body.items() if k not in extra}
    return client.post(f"/v2/images/{image_id}/import", json={"method": {"name": method, **fields}, **extra})


def web_download(client: httpx.Client, image_id: str, uri: str) -> httpx.Response:
    return start_import(client, image_id, "web-download", uri=uri)


def wait_task(client: httpx.Client, image_id: str, timeout: float = 30.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Poll until the image's newest task has ended; return ``(task, image)``."""
    deadline = time.monotonic() + timeout
    while True:
        tasks = client.get(f"/v2/images/{image_id}/tasks").json()["tasks"]
        task = tasks[-1] if tasks else None
        if task is not None and task["status"] in ("success", "failure"):
            return task, client.get(f"/v2/images/{image_id}").json()
        assert time.monotonic() < deadline, f"import of {image_id} did not end: {tasks}"
        time.sleep(0.05)
