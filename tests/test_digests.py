"""ImageDigests: md5 + sha512 in one pass, equal to hashlib's, however the stream is cut."""

from __future__ import annotations

import hashlib
import random

import pytest

from cache.digests import ImageDigests


@pytest.mark.parametrize("piece", [1, 1000, 256 * 1024, 1024 * 1024 + 3])
def test_digests_match_hashlib(piece: int) -> None:
    data = random.Random(piece).randbytes(3 * 1024 * 1024 + 17)
    with ImageDigests() as digests:
        for i in range(0, len(data), piece if piece > 1 else 997):
            digests.update(memoryview(data)[i : i + (piece if piece > 1 else 997)])
    assert digests.checksum == hashlib.md5(data).hexdigest()
    assert digests.os_hash_value == hashlib.sha512(data).hexdigest()
    assert digests.os_hash_algo == "sha512"
    assert digests.size == len(data)


def test_empty_stream() -> None:
    digests = ImageDigests()
    digests.update(b"")
    assert digests.checksum == hashlib.md5(b"").hexdigest()
    assert digests.os_hash_value == hashlib.sha512(b"").hexdigest()
    digests.close()


def test_submitted_pieces_are_hashed_in_order() -> None:
    pieces = [random.randbytes(n) for n in (300_000, 1, 5_000_000, 262_144, 70)]
    with ImageDigests(parallel_min=1024) as digests:
        futures = [digests.submit(p) for p in pieces[:3]]
        digests.update(pieces[3])  # after queued pieces, not before
        futures.append(digests.submit(pieces[4]))
        for f in futures:
            f.result()
    whole = b"".join(pieces)
    assert digests.checksum == hashlib.md5(whole).hexdigest()
    assert digests.os_hash_value == hashlib.sha512(whole).hexdigest()
    assert digests.size == len(whole)
