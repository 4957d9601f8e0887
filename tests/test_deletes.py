"""Deleting an image is crash-safe: a journal entry commits with the record's delete,
and the reaper (after the answer, in the reaper loop, at start-up recovery) removes the
image's store data and manifest before it drops the entry.

The store delete is made to fail for real: the image's file in the file store is
replaced by a non-empty directory, which ``unlink`` refuses (EISDIR) even for root,
whom ``chmod`` would not stop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import lmdb

from tests.server import ServerProcess
from tests.test_api_data import create_image, payload, upload


def journal(data_dir: Path) -> list[str]:
    """Image ids in the delete journal (read from LMDB next to the running server)."""
    env = lmdb.open(str(data_dir / "meta"), readonly=True, max_dbs=32, lock=True)
    try:
        try:
            db = env.open_db(b"delete_journal")
        except lmdb.Error:
            return []  # no delete journalled yet
        with env.begin(db=db) as txn:
            return [bytes(k).decode() for k, _ in txn.cursor()]
    finally:
        env.close()


def block_store_delete(data_dir: Path, image_id: str) -> bytes:
    """Make the store's delete of the image fail; return its bytes (to put back later)."""
    path = data_dir / "images" / image_id
    data = path.read_bytes()
    path.unlink()
    (path / "blocker").mkdir(parents=True)
    return data


def unblock(data_dir: Path, image_id: str, data: bytes) -> Path:
    """The failure is gone; the image's data is back where the journal says it is."""
    path = data_dir / "images" / image_id
    (path / "blocker").rmdir()
    path.rmdir()
    path.write_bytes(data)
    return path


def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)
    return check()


def test_failed_store_delete_is_journaled_and_finished_by_the_reaper(
    server_factory: Callable[..., ServerProcess],
) -> None:
    proc = server_factory(noauth=True, config={"reap_interval": 1})
    with httpx.Client(base_url=proc.url, timeout=30) as client:
        image_id = create_image(client)
        assert upload(client, image_id, payload(100_000, 21)).status_code == 204
        data = block_store_delete(proc.data_dir, image_id)
        assert client.delete(f"/v2/images/{image_id}").status_code == 204
        assert client.get(f"/v2/images/{image_id}").status_code == 404
        assert wait_for(lambda: "could not delete data of" in proc.log() and image_id in proc.log())
        time.sleep(1.5)  # reaper passes run meanwhile, and fail like the first attempt
        assert journal(proc.data_dir) == [image_id]

        path = unblock(proc.data_dir, image_id, data)
        assert wait_for(lambda: not path.exists()), "one reaper pass should remove the data"
        assert wait_for(lambda: journal(proc.data_dir) == [])


def test_delete_cut_by_a_crash_is_finished_at_start_up(tmp_path: Path) -> None:
    """kill -9 right after the DELETE answered, before its data could go (the store
    refused it): the restart's recovery removes the data; no reaper loop runs."""
    proc = ServerProcess(tmp_path / "data", noauth=True, config={"reap_interval": 0}).start()
    try:
        with httpx.Client(base_url=proc.url, timeout=30) as client:
            image_id = create_image(client)
            assert upload(client, image_id, payload(100_000, 22)).status_code == 204
            data = block_store_delete(proc.data_dir, image_id)
            assert client.delete(f"/v2/images/{image_id}").status_code == 204
        proc.kill()
        assert journal(proc.data_dir) == [image_id]
        path = unblock(proc.data_dir, image_id, data)
        proc.start()  # answers only once start-up recovery is done
        assert not path.exists()
        assert journal(proc.data_dir) == []
        with httpx.Client(base_url=proc.url, timeout=30) as client:
            assert client.get(f"/v2/images/{image_id}").status_code == 404
    finally:
        proc.stop()


def test_plain_delete_leaves_no_journal(server_factory: Callable[..., ServerProcess]) -> None:
    proc = server_factory(noauth=True)
    with httpx.Client(base_url=proc.url, timeout=30) as client:
        image_id = create_image(client)
        assert upload(client, image_id, payload(10_000, 23)).status_code == 204
        assert client.delete(f"/v2/images/{image_id}").status_code == 204
        assert wait_for(lambda: not (proc.data_dir / "images" / image_id).exists())
        assert wait_for(lambda: journal(proc.data_dir) == [])
