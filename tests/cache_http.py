"""Helpers for the cache tests over HTTP: images, uploads, downloads, cache state, polling."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.server import ServerProcess
from tests.helpers import payload, wait_for

__all__ = [
    "CHUNK",
    "CacheClient",
    "cache_server_config",
    "chunk_files",
    "payload",
    "wait_for",
]

CHUNK = 64 * 1024
OCTET = {"Content-Type": "application/octet-stream"}

def cache_server_config(**overrides: object) -> dict[str, object]:
    """Small chunks; loops off unless a test turns one on, so only the test acts on the cache.
    The file store is cached like a remote store (``in_place = false``, as for a network
    filesystem): these tests are about the cache."""
    config: dict[str, object] = {
        "file": {"in_place": False},
        "chunk_size": CHUNK,
        "cache_max_size": 64 * 1024 * 1024,
        "prune_interval": 0,
        "clean_interval": 0,
        "prefetch_interval": 0,
        "image_size_cap": 64 * 1024 * 1024,
    }
    config.update(overrides)
    return config


def chunk_files(data_dir: Path) -> list[Path]:
    root = data_dir / "cache" / "chunks"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


class CacheClient:
    """An httpx client for one server with the calls the cache tests make."""

    def __init__(self, server: ServerProcess, token: str | None = None) -> None:
        self.server = server
        self.http = httpx.Client(
            base_url=server.url, headers={"X-Auth-Token": token or server.admin_token}, timeout=60
        )

    def close(self) -> None:
        self.http.close()

    def create_image(self, **fields: object) -> str:
        body = {"name": f"cache-{uuid.uuid4().hex[:8]}", "disk_format": "raw", "container_format": "bare", **fields}
        r = self.http.post("/v2/images", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def upload(self, image_id: str, data: bytes) -> None:
        r = self.http.put(f"/v2/images/{image_id}/file", content=data, headers=OCTET)
        assert r.status_code == 204, r.text

    def new_image(self, data: bytes, **fields: object) -> str:
        image_id = self.create_image(**fields)
        self.upload(image_id, data)
        return image_id

    def download(self, image_id: str) -> bytes:
        r = self.http.get(f"/v2/images/{image_id}/file")
        assert r.status_code == 200, r.text
        return r.content

    def status(self, image_id: str) -> str:
        return str(self.http.get(f"/v2/images/{image_id}").json()["status"])

    def state(self) -> dict[str, Any]:
        r = self.http.get("/v2/cache")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def cached(self) -> dict[str, dict[str, Any]]:
        """Fully cached images by id."""
        return {row["image_id"]: row for row in self.state()["cached_images"]}

    def queued(self) -> list[str]:
        return list(self.state()["queued_images"])

    def stats(self) -> dict[str, int]:
        r = self.http.get("/v2/cache/stats")
        assert r.status_code == 200, r.text
        body: dict[str, int] = r.json()
        return body
