"""The Image API v2 calls the harness makes, shared by imgproxy and Glance.

Plain synchronous httpx: these calls prepare workloads; the timed reads go
through :mod:`bench.clients`. A missing endpoint (404/405/501) becomes
:class:`NotSupported` so the scenario reports "not run: <why>".
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx

from .base import ImageFile, NotSupported, System

__all__ = ["ImageApiSystem"]

_MISSING = (404, 405, 501)


def _iter_file(path: Path, piece: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as f:
        while data := f.read(piece):
            yield data


class ImageApiSystem(System):
    """A server speaking the Image API v2 at ``self.url`` with ``self.headers``."""

    headers: dict[str, str] = {}

    def client(self, timeout: float = 600.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)

    def create_image(self, name: str, **extra: object) -> str:
        with self.client() as c:
            body = {"name": name, "disk_format": "raw", "container_format": "bare", **extra}
            r = c.post("/v2/images", json=body)
            if r.status_code in _MISSING:
                raise NotSupported(f"POST /v2/images answered {r.status_code}")
            r.raise_for_status()
            return str(r.json()["id"])

    def upload(self, image_id: str, path: Path) -> None:
        with self.client() as c:
            r = c.put(
                f"/v2/images/{image_id}/file",
                content=_iter_file(path),
                headers={"Content-Type": "application/octet-stream"},
            )
            if r.status_code in _MISSING:
                raise NotSupported(f"PUT /v2/images/{{id}}/file answered {r.status_code}")
            if r.status_code >= 400:
                raise RuntimeError(f"upload answered {r.status_code}: {r.text[:300]}")

    def add_location(self, image_id: str, url: str, image: ImageFile) -> None:
        """Point a queued image at ``url`` with its digests (the 2.17 locations API).

        Falls back to the older json-patch ``add /locations/-`` when ``POST`` is missing.
        """
        validation = {"os_hash_algo": "sha512", "os_hash_value": image.sha512, "checksum": image.md5}
        with self.client() as c:
            r = c.post(f"/v2/images/{image_id}/locations", json={"url": url, "validation_data": validation})
            if r.status_code == 400 and "checksum" in r.text:
                # Glance 33's schema takes only the sha512 pair; it recomputes md5 itself.
                sha_only = {k: v for k, v in validation.items() if k != "checksum"}
                r = c.post(f"/v2/images/{image_id}/locations", json={"url": url, "validation_data": sha_only})
            if r.status_code < 300:
                return
            first = f"POST /v2/images/{{id}}/locations answered {r.status_code}: {r.text[:200]}"
            patch = [{"op": "add", "path": "/locations/-", "value": {"url": url, "metadata": {}, "validation_data": validation}}]
            r2 = c.patch(
                f"/v2/images/{image_id}",
                json=patch,
                headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
            )
            if r2.status_code < 300:
                return
            if r.status_code in _MISSING:
                raise NotSupported(f"{first}; PATCH add /locations answered {r2.status_code}")
            raise RuntimeError(f"{first}; PATCH add /locations answered {r2.status_code}: {r2.text[:200]}")

    def wait_active(self, image_id: str, timeout: float = 30.0) -> dict:
        import time

        deadline = time.monotonic() + timeout
        with self.client() as c:
            while True:
                body = c.get(f"/v2/images/{image_id}").json()
                if body.get("status") == "active" or time.monotonic() > deadline:
                    return body
                time.sleep(0.05)

    def delete_image(self, image_id: str) -> None:
        """Delete the image (and its stored data); errors are ignored: this only frees space."""
        with self.client() as c:
            try:
                c.delete(f"/v2/images/{image_id}")
            except httpx.HTTPError:
                pass

    def file_url(self, image_id: str) -> str:
        return f"{self.url}/v2/images/{image_id}/file"

    def warm(self, image_id: str) -> None:
        """Read the image once, whole, so the system's cache holds it."""
        with self.client() as c, c.stream("GET", f"/v2/images/{image_id}/file") as r:
            if r.status_code in _MISSING:
                raise NotSupported(f"GET /v2/images/{{id}}/file answered {r.status_code}")
            r.raise_for_status()
            for _ in r.iter_raw(1 << 20):
                pass

    def cold_url(self, image: ImageFile, upstream_url: str) -> str:
        image_id = self.create_image(image.name)
        self.add_location(image_id, upstream_url, image)
        body = self.wait_active(image_id)
        if body.get("status") != "active":
            raise NotSupported(f"image with a location stayed {body.get('status')!r}")
        return self.file_url(image_id)

    def warm_url(self, image: ImageFile) -> str:
        image_id = self.create_image(image.name)
        self.upload(image_id, image.path)
        self.warm(image_id)
        return self.file_url(image_id)
