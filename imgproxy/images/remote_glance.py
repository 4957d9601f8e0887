"""glance-download's other side: an image API (Glance, or another imgproxy) in another region.

Glance finds the remote endpoint in the Keystone catalog by ``glance_region`` and
``glance_service_interface``; imgproxy has no catalog, so the operator names the regions:

```toml
[glance_download]
extra_properties = ["hw_", "trait:", "os_distro", "os_secure_boot", "os_type"]  # Glance's default
[glance_download.regions]
RegionTwo = "https://glance.two.example:9292"          # its public interface
# or, per interface, with a token of this service for that region (else the caller's is sent):
# RegionTwo = {public = "https://...", internal = "http://...", token = "..."}
```

The import reads the remote image's record (it must be ``active``; its ``disk_format``,
``container_format``, size and the properties whose names start with one of
``extra_properties`` are taken over) and then its data, with the caller's
``X-Auth-Token`` as Glance sends it (or the region's ``token``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from backends import PIECE_SIZE

__all__ = ["GlanceRegions", "Region", "RemoteGlanceError", "RemoteGlance", "DEFAULT_EXTRA_PROPERTIES"]

DEFAULT_EXTRA_PROPERTIES = ("hw_", "trait:", "os_distro", "os_secure_boot", "os_type")
INTERFACES = ("public", "internal", "admin")


class RemoteGlanceError(Exception):
    """The remote image API refused or failed; the message is for the task."""


@dataclass(frozen=True)
class Region:
    endpoints: Mapping[str, str]  # interface -> base URL
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class GlanceRegions:
    """The ``[glance_download]`` table."""

    regions: Mapping[str, Region] = field(default_factory=dict)
    extra_properties: tuple[str, ...] = DEFAULT_EXTRA_PROPERTIES
    timeout: float = 30.0

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> GlanceRegions:
        """Validate the table; ``ValueError`` names the bad key."""
        known = {"regions", "extra_properties", "timeout"}
        for key in table:
            if key not in known:
                raise ValueError(f"glance_download.{key}: unknown (known: {', '.join(sorted(known))})")
        regions: dict[str, Region] = {}
        raw_regions = table.get("regions", {})
        if not isinstance(raw_regions, Mapping):
            raise ValueError("glance_download.regions: expected a table of region = URL")
        for name, raw in raw_regions.items():
            regions[str(name)] = _region(str(name), raw)
        extra = table.get("extra_properties", list(DEFAULT_EXTRA_PROPERTIES))
        if not isinstance(extra, list) or not all(isinstance(p, str) and p for p in extra):
            raise ValueError("glance_download.extra_properties: expected a list of property name prefixes")
        if any(p.startswith("os_glance") for p in extra):
            raise ValueError("glance_download.extra_properties: os_glance_* properties are reserved")
        timeout = table.get("timeout", 30.0)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError("glance_download.timeout: expected a positive number of seconds")
        return cls(regions, tuple(extra), float(timeout))

    def find(self, region: str, interface: str) -> tuple[str, str | None]:
        """``(base URL, the region's own token or None)``; ValueError naming what is unknown."""
        entry = self.regions.get(region)
        if entry is None:
            known = ", ".join(sorted(self.regions)) or "none configured"
            raise ValueError(f"unknown glance_region {region!r} (known: {known})")
        url = entry.endpoints.get(interface)
        if url is None:
            raise ValueError(f"glance_region {region!r} has no {interface!r} interface")
        return url, entry.token

    def properties_to_copy(self, remote: Mapping[str, Any]) -> dict[str, Any]:
        """The remote image's properties glance-download takes over (never ``os_glance_*``)."""
        return {k: v for k, v in remote.items()
                if any(k.startswith(p) for p in self.extra_properties) and not k.startswith("os_glance")
                and isinstance(v, str)}


def _region(name: str, raw: Any) -> Region:
    where = f"glance_download.regions.{name}"
    if isinstance(raw, str):
        raw = {"public": raw}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a URL or a table of interface = URL")
    endpoints: dict[str, str] = {}
    token = None
    for key, value in raw.items():
        if key == "token":
            if not isinstance(value, str):
                raise ValueError(f"{where}.token: expected a string")
            token = value
        elif key in INTERFACES:
            if not isinstance(value, str) or not value.startswith(("http://", "https://")):
                raise ValueError(f"{where}.{key}: expected an http(s) URL")
            endpoints[key] = value.rstrip("/")
        else:
            raise ValueError(f"{where}.{key}: unknown (known: {', '.join(INTERFACES)}, token)")
    if not endpoints:
        raise ValueError(f"{where}: no endpoint URL")
    return Region(endpoints, token)


class RemoteGlance:
    """One remote image API, reached with one token. Use as an async context manager."""

    def __init__(self, base_url: str, token: str | None, timeout: float) -> None:
        self.base_url = base_url
        headers = {"Accept-Encoding": "identity"}
        if token:
            headers["X-Auth-Token"] = token
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout), headers=headers, follow_redirects=True,
                                         max_redirects=5, trust_env=False)

    async def __aenter__(self) -> RemoteGlance:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def image(self, image_id: str) -> dict[str, Any]:
        """The remote image's record; RemoteGlanceError unless it answers 200 with JSON."""
        url = f"{self.base_url}/v2/images/{image_id}"
        try:
            response = await self._client.get(url)
        except httpx.HTTPError as exc:
            raise RemoteGlanceError(f"cannot reach {url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise RemoteGlanceError(f"{url} answered {response.status_code}")
        try:
            record = response.json()
        except ValueError:
            raise RemoteGlanceError(f"{url} did not answer JSON") from None
        if not isinstance(record, dict):
            raise RemoteGlanceError(f"{url} did not answer an image")
        return record

    async def data(self, image_id: str) -> AsyncIterator[bytes]:
        """The remote image's data in pieces; RemoteGlanceError if it fails."""
        url = f"{self.base_url}/v2/images/{image_id}/file"
        try:
            async with self._client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise RemoteGlanceError(f"{url} answered {response.status_code}")
                async for piece in response.aiter_raw(PIECE_SIZE):
                    yield piece
        except httpx.HTTPError as exc:
            raise RemoteGlanceError(f"download from {url} failed: {type(exc).__name__}: {exc}") from exc
