"""Fixtures: the object stores imgproxy keeps images in, one real server of each kind on loopback.

``image_store`` runs a test module once per kind: S3 on ``rclone serve s3``, S3 on Swift's
s3api, and Swift through its own API. Each gives the settings of an ``imgproxy serve`` whose
store it is, and what the store keeps for an image, read with a client of the test's own
(never through imgproxy). Servers are module-scoped (Swift's own kind uses the session's
Swift) and stopped by PID when the module ends, also when tests fail.

Import both fixtures into a module: ``from tests.image_store_fixtures import image_store, swift_server``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.s3_fixtures import SERVER_KINDS, S3Server
from tests.swift_fixtures import SwiftServer, new_container, object_names, store_options, swift_api, swift_server

__all__ = ["ImageStore", "STORE_KINDS", "image_store", "swift_server"]

MiB = 1024 * 1024
# Small Swift segments, so the tests' images are static large objects of several.
SWIFT_SEGMENT = 128 * 1024


@dataclass
class ImageStore:
    """One store an imgproxy under test writes to, and a look at what it holds."""

    kind: str
    # The store's part of the ``imgproxy serve`` settings (``store`` and its kind's table).
    config: dict[str, Any]
    # Every object the store keeps for an image id: a large object's segments and the
    # parts of an upload in progress included.
    objects: Callable[[str], set[str]]


_PREFIXES = itertools.count()


def _on_s3(server: S3Server) -> ImageStore:
    prefix = f"images{next(_PREFIXES)}"
    return ImageStore(
        kind=f"s3 on {server.kind}",
        config={"store": server.url(prefix), "s3": server.options(part_size=5 * MiB)},
        objects=lambda image_id: {name for name in server.files(prefix) if image_id in name},
    )


def _on_swift(server: SwiftServer) -> Iterator[ImageStore]:
    with swift_api(server) as api:
        container = new_container(api, "images")
        yield ImageStore(
            kind="swift",
            config={"store": f"swift://{container}",
                    "swift": store_options(server, segment_size=SWIFT_SEGMENT)},
            objects=lambda image_id: {name for name in object_names(api, container) if image_id in name},
        )


STORE_KINDS = ("s3-rclone", "s3-swift", "swift")


@pytest.fixture(scope="module", params=STORE_KINDS)
def image_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageStore]:
    """One store of each kind per test module (so every test using it runs against each)."""
    kind = str(request.param)
    if kind == "swift":
        yield from _on_swift(request.getfixturevalue("swift_server"))
        return
    server = SERVER_KINDS[kind.removeprefix("s3-")](tmp_path_factory.mktemp(kind))
    try:
        yield _on_s3(server)
    finally:
        server.stop()

