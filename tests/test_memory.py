"""The idle heap trimmer: glibc gets freed memory back when the last download ends."""

from __future__ import annotations

import asyncio
import ctypes.util

import pytest

from imgproxy.memory import IdleTrimmer

pytestmark = pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="no C library to ask (not glibc)")


async def _settle(trimmer: IdleTrimmer) -> None:
    for _ in range(200):
        if not trimmer._busy:
            return
        await asyncio.sleep(0.01)


async def test_trims_when_the_last_stream_ends_and_not_before() -> None:
    trimmer = IdleTrimmer(min_interval=0.0)
    trimmer.begin()
    trimmer.begin()
    trimmer.end()  # one stream still open
    await _settle(trimmer)
    assert trimmer.trims == 0
    trimmer.end()
    await _settle(trimmer)
    assert trimmer.trims == 1


async def test_trims_at_most_once_per_interval() -> None:
    trimmer = IdleTrimmer(min_interval=3600.0)
    for _ in range(3):
        trimmer.begin()
        trimmer.end()
        await _settle(trimmer)
    assert trimmer.trims == 1
