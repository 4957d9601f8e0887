"""An edge's cached reads go out like the service's: verified chunks with sendfile, never a corrupt one.

Real servers on loopback: an imgproxy edge (``imgproxy serve --upstream-api``, whose protocol
offers the ASGI ``http.response.zerocopysend`` extension) in front of a central imgproxy; the
fault injection of an upstream whose bytes change under an image id uses
:mod:`tests.fake_image_api` (no real server serves other bytes under the same digests).

How sendfile is seen from outside: ``strace`` attached to the edge's worker counts the
bytes its ``sendfile`` calls move (bytes sent through Python go out with ``write``/``writev``
under uvloop, never with ``sendfile``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from cache import FileSlice, UpstreamCorrupt
from imgproxy.edge.verify import hold_last_byte
from tests.cache_http import chunk_files, payload, wait_for
from tests.fake_image_api import FakeImageApi, fake_image_api  # noqa: F401 - fixture
from tests.server import ServerProcess
from tests.test_edge import CHUNK, bytes_served, client, edge_config, upload_image
from tests.test_zero_copy import flip_byte

pytestmark = pytest.mark.timeout(120)

SIZE = 5 * CHUNK + 1234  # six chunks, the last one short

# Ranges that start, end or straddle chunk boundaries (and the last byte).
RANGES = [(0, 0), (CHUNK - 1, CHUNK), (CHUNK - 10, 3 * CHUNK + 9), (2 * CHUNK, 4 * CHUNK - 1),
          (5 * CHUNK, SIZE - 1), (17, SIZE - 1), (SIZE - 1, SIZE - 1)]


class SendfileTrace:
    """``strace`` attached to process ``pid`` (all its threads), counting what ``sendfile`` sent.
    Stopped by its PID when the block ends, even when the test fails."""

    def __init__(self, pid: int, log: Path) -> None:
        if shutil.which("strace") is None:
            pytest.fail("strace is not installed: apt-get install strace to run this test", pytrace=False)
        self.pid, self.log = pid, log
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> SendfileTrace:
        self.proc = subprocess.Popen(["strace", "-f", "-e", "trace=sendfile", "-e", "signal=none", "-o", str(self.log),
                                      "-p", str(self.pid)], stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "strace: Process N attached" once the tracing is on
        if "attached" not in line:
            self.proc.wait(10)
            pytest.fail(f"strace cannot attach to the edge ({line.strip()}); run as a user who may ptrace it",
                        pytrace=False)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)  # detaches, leaving the edge running
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def sent(self) -> int:
        """Bytes the traced process sent with ``sendfile`` (the calls' results)."""
        calls = re.findall(r"sendfile\(.*\)\s+=\s+(\d+)", self.log.read_text())
        return sum(int(n) for n in calls)


@pytest.fixture
def central(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory(config={"chunk_size": CHUNK, "image_size_cap": 64 * 1024 * 1024})


def test_a_cached_image_leaves_the_edge_with_sendfile(central: ServerProcess, server_factory: Callable[..., ServerProcess],
                                                      tmp_path: Path) -> None:
    edge = server_factory(config=edge_config(central.url))
    token = central.admin_token
    data = payload(32 * CHUNK + 5, seed=41)
    with client(central.url, token) as direct:
        image_id = upload_image(direct, data, name="zero-copy")
    with client(edge.url, token) as c:
        assert c.get(f"/v2/images/{image_id}/file").content == data  # cold: filled, verified whole
        assert edge.proc is not None  # one worker: uvicorn serves in this process
        with SendfileTrace(edge.proc.pid, tmp_path / "whole.strace") as whole:
            r = c.get(f"/v2/images/{image_id}/file")
        assert r.status_code == 200 and r.content == data
        with SendfileTrace(edge.proc.pid, tmp_path / "ranged.strace") as ranged:
            r = c.get(f"/v2/images/{image_id}/file", headers={"Range": f"bytes={CHUNK - 3}-{20 * CHUNK + 2}"})
        assert r.status_code == 206 and r.content == data[CHUNK - 3:20 * CHUNK + 3]
    assert whole.sent() == len(data)
    assert ranged.sent() == 19 * CHUNK + 6
    assert bytes_served(central, token) == len(data)  # the upstream was read once


def test_ranges_across_chunk_boundaries_cold_and_cached(central: ServerProcess,
                                                        server_factory: Callable[..., ServerProcess]) -> None:
    edge = server_factory(config=edge_config(central.url))
    token = central.admin_token
    data = payload(SIZE, seed=42)
    with client(central.url, token) as direct:
        cold_ids = [upload_image(direct, data, name=f"cold-{i}") for i in range(len(RANGES))]
    with client(edge.url, token) as c:
        # Each range the first read of its image: its last byte waits for the whole-image check.
        for image_id, (first, last) in zip(cold_ids, RANGES):
            r = c.get(f"/v2/images/{image_id}/file", headers={"Range": f"bytes={first}-{last}"})
            assert r.status_code == 206, r.text
            assert r.headers["content-range"] == f"bytes {first}-{last}/{SIZE}"
            assert r.content == data[first:last + 1], (first, last)
        # The same ranges again, from verified chunks on disk (sendfile).
        image_id = cold_ids[0]
        assert c.get(f"/v2/images/{image_id}/file").content == data
        for first, last in RANGES:
            r = c.get(f"/v2/images/{image_id}/file", headers={"Range": f"bytes={first}-{last}"})
            assert r.status_code == 206 and r.content == data[first:last + 1], (first, last)


def test_a_corrupt_cached_chunk_on_the_edge_is_refilled_never_sent(
        central: ServerProcess, server_factory: Callable[..., ServerProcess]) -> None:
    edge = server_factory(config=edge_config(central.url))
    token = central.admin_token
    data = payload(SIZE, seed=43)
    with client(central.url, token) as direct:
        image_id = upload_image(direct, data, name="corrupt-chunk")
    with client(edge.url, token) as c, client(edge.url, edge.admin_token) as admin:
        assert c.get(f"/v2/images/{image_id}/file").content == data
        assert c.get(f"/v2/images/{image_id}/file").content == data  # every chunk verified and remembered
        victim = sorted(chunk_files(edge.data_dir), key=lambda p: p.stat().st_size)[-1]
        flip_byte(victim, 100)
        corrupt = admin.get("/v2/cache/stats").json()["corrupt_chunks"]
        assert c.get(f"/v2/images/{image_id}/file").content == data  # hashed again, dropped, refilled
        r = c.get(f"/v2/images/{image_id}/file", headers={"Range": f"bytes=90-{2 * CHUNK}"})
        assert r.status_code == 206 and r.content == data[90:2 * CHUNK + 1]
        assert wait_for(lambda: admin.get("/v2/cache/stats").json()["corrupt_chunks"] == corrupt + 1)
    assert bytes_served(central, token) == len(data) + CHUNK  # the one bad chunk read again


def _read_to_cut(url: str, headers: dict[str, str]) -> tuple[int, int, bytes, bool]:
    """(status, declared length, bytes received, whether the connection was cut)."""
    got = b""
    with httpx.Client(timeout=30) as http, http.stream("GET", url, headers=headers) as r:
        try:
            for part in r.iter_raw():
                got += part
        except httpx.RemoteProtocolError:
            return r.status_code, int(r.headers["content-length"]), got, True
        return r.status_code, int(r.headers["content-length"]), got, False


def test_a_corrupt_chunk_the_upstream_cannot_replace_cuts_the_connection(
        fake_image_api: FakeImageApi, server_factory: Callable[..., ServerProcess]) -> None:  # noqa: F811
    edge = server_factory(config=edge_config(fake_image_api.url, upstream_timeout=1.0, upstream_retries=1))
    image_id, data = str(uuid.uuid4()), payload(SIZE, seed=44)
    fake_image_api.add(image_id, data)
    url = f"{edge.url}/v2/images/{image_id}/file"
    with client(edge.url, "any") as c:
        assert c.get(f"/v2/images/{image_id}/file").content == data  # cached and verified whole
    # The upstream now serves other bytes under the same digests, and the edge's copy of the
    # third chunk rots: no good copy of it is left anywhere.
    fake_image_api.images[image_id].data = payload(SIZE, seed=45)
    victim = next(p for p in chunk_files(edge.data_dir) if p.read_bytes() == data[2 * CHUNK:3 * CHUNK])
    flip_byte(victim, 7)
    rotten = victim.read_bytes()
    status, declared, got, cut = _read_to_cut(url, {"X-Auth-Token": "any", "Range": "bytes=0-"})
    assert (status, declared, cut) == (206, SIZE, True)
    assert got[:2 * CHUNK] == data[:2 * CHUNK]  # the good chunks, then the cut
    assert len(got) < 3 * CHUNK  # the third chunk never whole ...
    assert rotten[:64] not in got  # ... and not one piece of the rotten copy
    # A read that starts at the bad chunk: its first piece comes from a fill of the upstream's
    # wrong bytes. Whether the fill's check fails before that piece is taken (then nothing was
    # sent: an error status) or after (206, cut before the chunk's end) is the scheduler's call;
    # either way no byte of the chunk is ever sent whole and none of the rotten copy.
    status, declared, got, cut = _read_to_cut(url, {"X-Auth-Token": "any", "Range": f"bytes={2 * CHUNK}-"})
    if status == 502:
        error = json.loads(got)["error"]
        assert error["code"] == 502 and "does not match" in error["message"] and not cut
    else:
        assert (status, declared, cut) == (206, SIZE - 2 * CHUNK, True)
        assert len(got) < CHUNK and rotten[:64] not in got
    r = httpx.get(url, headers={"X-Auth-Token": "any", "Range": f"bytes=0-{2 * CHUNK - 1}"}, timeout=30)
    assert r.status_code == 206 and r.content == data[:2 * CHUNK]


# ---- holding the last byte of an unverified image (the pieces, on a real file) --------------


async def _slices(path: Path, pieces: list[tuple[int, int]]) -> AsyncIterator[FileSlice]:
    """FileSlices of ``path``, each valid until the next is asked for (as the cache's are)."""
    for offset, count in pieces:
        fd = os.open(path, os.O_RDONLY)
        try:
            yield FileSlice(fd, offset, count)
        finally:
            os.close(fd)


async def _drain(body: AsyncIterator[bytes | memoryview | FileSlice], events: list[str],
                 task: asyncio.Future[None]) -> bytes:
    out = b""
    async for piece in body:
        if isinstance(piece, FileSlice):
            out += os.pread(piece.fd, piece.count, piece.offset)
        else:
            out += bytes(piece)
        events.append(f"{len(out)}{'' if task.done() else ' before the check'}")
    return out


def test_the_last_byte_of_file_slices_waits_for_the_whole_image_check(tmp_path: Path) -> None:
    path = tmp_path / "chunk"
    path.write_bytes(payload(3000, seed=46))
    want = path.read_bytes()[100:2100]

    async def run(fail: bool) -> tuple[list[str], bytes | Exception]:
        check: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def verify_pass() -> None:
            await check

        task = asyncio.ensure_future(verify_pass())
        asyncio.get_running_loop().call_later(0.05, lambda: check.set_exception(
            UpstreamCorrupt("mismatch", image_id="x", offset=0)) if fail else check.set_result(None))
        events: list[str] = []
        body = hold_last_byte(_slices(path, [(100, 1000), (1100, 1000)]), 2000, task)
        try:
            return events, await _drain(body, events, task)
        except UpstreamCorrupt as exc:
            return events, exc

    events, got = asyncio.run(run(False))
    assert got == want
    assert events == ["1000 before the check", "1999 before the check", "2000"]
    events, err = asyncio.run(run(True))
    assert isinstance(err, UpstreamCorrupt)
    assert events == ["1000 before the check", "1999 before the check"]  # the last byte never left
