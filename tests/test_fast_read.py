"""backends.fast_read: a store's read through the lean HTTP client, told as that store's.

Against the fault-injecting server (tests/faulty_http.py): no real store can be told to
cut a body short.
"""

from __future__ import annotations

import os

import pytest

from backends import BackendUnavailable, ByteRange
from backends.fast_read import store_read
from backends.http_fast import FastBody, FastPool, fast_target
from tests.faulty_http import FaultyServer, faulty_server  # noqa: F401 - fixture


def _pool() -> FastPool:
    # One connection: a body left open would hold it, and the next read would time out.
    return FastPool(timeout=5.0, max_connections=1, user_agent="imgproxy")


async def _open(pool: FastPool, server: FaultyServer, behaviour: str, byte_range: ByteRange, location: str) -> FastBody:
    target = fast_target(server.location(behaviour, "t"))
    assert target is not None
    body = await pool.open(target, byte_range, location)
    assert body is not None
    return body


async def _read(body: FastBody, failed: str, location: str) -> bytes:
    with store_read(body, failed, location):
        return b"".join([piece async for piece in body.pieces()])


async def test_a_cut_body_is_the_store_s_failure_and_frees_its_connection(faulty_server: FaultyServer) -> None:
    faulty_server.objects["t"] = data = os.urandom(300_000)
    pool = _pool()
    try:
        body = await _open(pool, faulty_server, "truncate", ByteRange(1000, 200_000), "s3://bucket/t")
        with pytest.raises(BackendUnavailable, match=r"^the s3 store images failed: http store sent 99500 of 199000 bytes$") as info:
            await _read(body, "the s3 store images failed", "s3://bucket/t")
        assert info.value.location == "s3://bucket/t"
        again = await _open(pool, faulty_server, "ok", ByteRange(0, 10), "s3://bucket/t")
        assert await _read(again, "the s3 store images failed", "s3://bucket/t") == data[:10]
    finally:
        pool.close()


async def test_a_read_its_reader_leaves_early_frees_its_connection(faulty_server: FaultyServer) -> None:
    faulty_server.objects["t"] = data = os.urandom(3_000_000)
    pool = _pool()
    try:
        body = await _open(pool, faulty_server, "ok", ByteRange(0, len(data)), "swift://c/t")
        with store_read(body, "swift: Swift failed", "swift://c/t"):
            async for piece in body.pieces():
                assert piece == data[:len(piece)]
                break
        again = await _open(pool, faulty_server, "ok", ByteRange(5, 15), "swift://c/t")
        assert await _read(again, "swift: Swift failed", "swift://c/t") == data[5:15]
    finally:
        pool.close()
