"""Every Range form on images the cache does not hold, across chunk boundaries.

The image is evicted before each request, so the bytes come from a fill of exactly the chunks
the range overlaps (read-ahead stays inside the range): the upstream byte count proves it.
Content is checked byte for byte against the uploaded data.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cache_http import CHUNK, CacheClient, cache_server_config, payload, wait_for
from tests.server import ServerProcess

SIZE = 5 * CHUNK + 123  # six chunks, the last one short
DATA = payload(SIZE, seed=77)


@pytest.fixture(scope="module")
def cold(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CacheClient, str]]:
    proc = ServerProcess(tmp_path_factory.mktemp("ranges") / "data", config=cache_server_config())
    with proc:
        api = CacheClient(proc)
        image_id = api.new_image(DATA)
        yield api, image_id
        api.close()


def _evict(api: CacheClient, image_id: str) -> None:
    """Make the image cold: once the last request's fills have stored their chunks (a fill
    outlives the response it fed), evict every chunk of it."""
    assert wait_for(lambda: api.stats()["active_fills"] == 0)
    assert api.http.delete(f"/v2/cache/{image_id}").status_code == 204


def _chunks_overlapped(start: int, end: int) -> int:
    """Bytes of the chunks that bytes start..end-1 touch."""
    first, last = start // CHUNK, (end - 1) // CHUNK
    return min(SIZE, (last + 1) * CHUNK) - first * CHUNK


@pytest.mark.parametrize(
    "header,start,end",
    [
        ("bytes=0-0", 0, 1),
        (f"bytes={CHUNK - 1}-{CHUNK}", CHUNK - 1, CHUNK + 1),  # two bytes, two chunks
        (f"bytes={CHUNK - 10}-{3 * CHUNK + 9}", CHUNK - 10, 3 * CHUNK + 10),  # four chunks
        (f"bytes=-{CHUNK + 5}", SIZE - CHUNK - 5, SIZE),  # suffix reaching back over a boundary
        (f"bytes={4 * CHUNK + 7}-", 4 * CHUNK + 7, SIZE),  # open-ended, into the short last chunk
        (f"bytes=10-{SIZE + 1000}", 10, SIZE),  # last byte past the end: clipped
        (f"bytes=-{SIZE + 100}", 0, SIZE),  # suffix longer than the image: all of it, as a 206
        (f"bytes={SIZE - 1}-{SIZE - 1}", SIZE - 1, SIZE),  # the very last byte
    ],
)
def test_cold_range_reads_only_its_chunks(cold: tuple[CacheClient, str], header: str, start: int, end: int) -> None:
    api, image_id = cold
    _evict(api, image_id)
    before = api.stats()["bytes_upstream"]
    r = api.http.get(f"/v2/images/{image_id}/file", headers={"Range": header})
    assert r.status_code == 206, r.text
    assert r.headers["content-range"] == f"bytes {start}-{end - 1}/{SIZE}"
    assert int(r.headers["content-length"]) == end - start
    assert "content-md5" not in r.headers  # the image's md5 is not the digest of a part
    assert r.content == DATA[start:end]
    assert api.stats()["bytes_upstream"] - before == _chunks_overlapped(start, end)


@pytest.mark.parametrize("header", ["bytes=-0", f"bytes={SIZE}-", f"bytes={SIZE + 5}-{SIZE + 9}"])
def test_unsatisfiable_range_is_416_and_reads_nothing(cold: tuple[CacheClient, str], header: str) -> None:
    api, image_id = cold
    _evict(api, image_id)
    before = api.stats()["bytes_upstream"]
    r = api.http.get(f"/v2/images/{image_id}/file", headers={"Range": header})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{SIZE}"
    assert api.stats()["bytes_upstream"] == before


@pytest.mark.parametrize("header", ["bytes=5-2", "items=0-10", "bytes=0-1,5-9", "bytes=abc"])
def test_ranges_not_served_as_ranges_give_the_whole_image(cold: tuple[CacheClient, str], header: str) -> None:
    api, image_id = cold
    _evict(api, image_id)
    r = api.http.get(f"/v2/images/{image_id}/file", headers={"Range": header})
    assert r.status_code == 200
    assert r.content == DATA


def test_if_range_with_a_validator_we_never_sent_serves_everything(cold: tuple[CacheClient, str]) -> None:
    api, image_id = cold
    _evict(api, image_id)
    r = api.http.get(f"/v2/images/{image_id}/file",
                     headers={"Range": f"bytes={CHUNK}-{2 * CHUNK}", "If-Range": '"some-etag"'})
    assert r.status_code == 200
    assert r.content == DATA
    assert "content-range" not in r.headers
