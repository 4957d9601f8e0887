"""Benchmark images: files of random bytes with their digests, and the machine's hashing limit.

Every image gets fresh random content: imgproxy's cache is content-addressed, so two
"cold" images with equal bytes would not be cold at all.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path

from .systems.base import ImageFile

__all__ = ["make_image", "digest_file", "range_digest", "hash_speed", "zipf_choices"]

_PIECE = 4 << 20


def make_image(directory: Path, name: str, size: int) -> ImageFile:
    """Write ``size`` random bytes to ``directory/name``; return it with sha512 and md5."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    sha, md5 = hashlib.sha512(), hashlib.md5()
    left = size
    with path.open("wb") as f:
        while left:
            data = os.urandom(min(_PIECE, left))
            sha.update(data)
            md5.update(data)
            f.write(data)
            left -= len(data)
    return ImageFile(path, size, sha.hexdigest(), md5.hexdigest())


def digest_file(path: Path) -> ImageFile:
    sha, md5 = hashlib.sha512(), hashlib.md5()
    size = 0
    with path.open("rb") as f:
        while data := f.read(_PIECE):
            sha.update(data)
            md5.update(data)
            size += len(data)
    return ImageFile(path, size, sha.hexdigest(), md5.hexdigest())


def range_digest(image: ImageFile, first: int, last: int) -> str:
    with image.path.open("rb") as f:
        f.seek(first)
        return hashlib.sha512(f.read(last - first + 1)).hexdigest()


def hash_speed(size: int = 64 << 20) -> dict[str, float]:
    """Single-thread MB/s of md5, sha512, and both in one pass (an upload's hashing limit)."""
    data = os.urandom(size)
    out = {}
    for name, algos in (("md5", ("md5",)), ("sha512", ("sha512",)), ("md5+sha512", ("md5", "sha512"))):
        t0 = time.perf_counter()
        for algo in algos:
            hashlib.new(algo, data).digest()
        out[name] = round(size / (time.perf_counter() - t0) / 1e6, 1)
    return out


def zipf_choices(n: int, m: int, rng: random.Random, s: float = 1.0) -> list[int]:
    """``n`` draws from {0..m-1} with P(k) proportional to 1/(k+1)^s (popular images first)."""
    weights = [1.0 / (k + 1) ** s for k in range(m)]
    return rng.choices(range(m), weights=weights, k=n)
