"""An upload whose finishing transaction fails leaves the image queued and keeps no data.

The finishing transaction (record active + manifest, one LMDB commit) failing is a
fault no real server can be told to produce on demand, so this test injects it: a
``Registry`` whose ``finish_upload`` raises ``lmdb.DiskError``, as a commit that hits a
disk error does. Everything else is real: the service, its LMDB environment, the cache
and the file store in a temp dir.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

from imgproxy.context import RequestContext
from imgproxy.registry import Registry
from imgproxy.service import open_service
from imgproxy.settings import load_settings

ADMIN = RequestContext(project_id="p", roles=frozenset({"admin", "member"}))


class FinishFails(Registry):
    """Fault injection: the commit that would make the image active fails."""

    def finish_upload(self, image_id: str, **kwargs: Any) -> dict[str, Any] | None:
        raise lmdb.DiskError("injected: disk error while committing")


async def test_error_in_finish_puts_the_image_back_to_queued_without_data(tmp_path: Path) -> None:
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path, "auth": "noauth", "chunk_size": 64 * 1024})
    service = await open_service(settings, loops=False)
    try:
        service.registry = FinishFails(service.env)

        async def create_body() -> Any:
            return {"name": "finish-fails", "disk_format": "raw", "container_format": "bare"}

        image_id = (await service.images.records.create(ADMIN, create_body))["id"]
        data = b"x" * 200_000

        async def body() -> AsyncIterator[bytes]:
            yield data

        with pytest.raises(lmdb.DiskError):
            await service.images.uploads.upload(ADMIN, image_id, body(), len(data))
        record = service.registry.get(image_id)
        assert record is not None and record["status"] == "queued"
        assert "_upload_owner" not in record
        assert not (tmp_path / "images" / image_id).exists()
        # Queued again: a later upload can succeed.
        service.registry = Registry(service.env)
        await service.images.uploads.upload(ADMIN, image_id, body(), len(data))
        assert service.registry.get(image_id)["status"] == "active"  # type: ignore[index]
    finally:
        await service.aclose()
