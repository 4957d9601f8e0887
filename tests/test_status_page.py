"""GET /status in a real headless browser, while a herd reads an image through a slow store."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser import dump_dom, screenshot
from tests.nginx_fixtures import NginxStore, nginx_store_factory  # noqa: F401
from tests.server import ServerProcess

MiB = 1024 * 1024
STATUS_TOKEN = "wall-screen-token-7f3a"
READERS = 3


class _Elements(HTMLParser):
    """Attributes of the elements that have an ``id``, and of every ``tr``/``li`` by class."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str]] = {}
        self.by_class: dict[str, list[dict[str, str]]] = {}
        self.scripts = 0
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.by_id[a["id"]] = a
        for cls in a.get("class", "").split():
            self.by_class.setdefault(cls, []).append(a)
        self.scripts += tag == "script"
        self.external += [a[k] for k in ("src", "href") if k in a]


def parse(dom: str) -> _Elements:
    elements = _Elements()
    elements.feed(dom)
    return elements


def _stats(api: httpx.Client) -> dict[str, Any]:
    stats: dict[str, Any] = api.get("/v2/cache/stats").json()
    return stats


def _poll(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def herd(server_factory: Callable[..., ServerProcess],
         nginx_store_factory: Callable[..., NginxStore]) -> Iterator[tuple[ServerProcess, httpx.Client, str]]:  # noqa: F811
    """A server whose image ``slow`` (3 MiB, one chunk) lives behind a 64 KiB/s store, queued for
    prefetch and read by a herd of readers: its fill runs for the length of the test."""
    slow = nginx_store_factory(limit_rate="64k")
    proc = server_factory(config={"status_token": STATUS_TOKEN, "prefetch_interval": 0})
    api = httpx.Client(base_url=proc.url, headers={"X-Auth-Token": proc.admin_token}, timeout=30)
    warm = api.post("/v2/images", json={"name": "debian-12", "disk_format": "raw", "container_format": "bare"})
    warm_id = warm.json()["id"]
    api.put(f"/v2/images/{warm_id}/file", content=os.urandom(300_000), headers={"Content-Type": "application/octet-stream"})
    for _ in range(3):
        assert len(api.get(f"/v2/images/{warm_id}/file").content) == 300_000
    data = random.Random(5).randbytes(3 * MiB)
    image_id = api.post("/v2/images", json={"name": "ubuntu-24.04", "disk_format": "raw",
                                            "container_format": "bare"}).json()["id"]
    validation = {"os_hash_algo": "sha512", "os_hash_value": hashlib.sha512(data).hexdigest()}
    r = api.post(f"/v2/images/{image_id}/locations", json={"url": slow.put("ubuntu.img", data),
                                                            "validation_data": validation})
    assert r.status_code == 202, r.text
    stop = threading.Event()

    def read() -> None:
        with httpx.Client(base_url=proc.url, headers={"X-Auth-Token": proc.admin_token}, timeout=120) as c:
            with c.stream("GET", f"/v2/images/{image_id}/file") as response:
                for _ in response.iter_bytes():
                    if stop.is_set():
                        return

    readers = [threading.Thread(target=read, daemon=True) for _ in range(READERS)]
    assert api.put(f"/v2/cache/{image_id}").status_code == 202  # the prefetcher starts the fill
    _poll(lambda: _stats(api)["active_fills"] == 1, "the prefetch fill did not start")
    for t in readers:
        t.start()
    _poll(lambda: _stats(api)["coalesced_waiters"] >= READERS, "the readers did not join the fill")
    # The queued image's verify pass joins the fill too, a moment later: wait for a quiet second.
    seen = -1
    while seen != _stats(api)["coalesced_waiters"]:
        seen = _stats(api)["coalesced_waiters"]
        time.sleep(1.0)
    try:
        yield proc, api, image_id
    finally:
        stop.set()
        proc.stop()  # cuts the readers
        for t in readers:
            t.join(10)
        api.close()


def test_status_page_in_a_browser_matches_the_stats_during_a_fill(
        herd: tuple[ServerProcess, httpx.Client, str], tmp_path: Path) -> None:
    proc, api, image_id = herd
    page = f"{proc.url}/status?token={STATUS_TOKEN}"
    before = _stats(api)
    dom = dump_dom(page)
    after = _stats(api)
    assert after["active_fills"] == 1, "the fill ended before the page was read: the test proves nothing"
    el = parse(dom)
    assert el.scripts == 0 and el.external == [], "the page must be self-contained"
    stable = ("hits", "misses", "chunks", "coalesced_waiters", "fills", "fill_failures", "evicted_chunks",
              "corrupt_chunks")
    for key in stable:
        assert before[key] == after[key], f"{key} moved while the page was read"
        assert int(el.by_id[f"stat-{key}"]["data-value"]) == after[key], key
    assert int(el.by_id["occupancy"]["data-value"]) == after["bytes_cached"]
    assert int(el.by_id["max-size"]["data-value"]) == after["max_size"]
    assert int(el.by_id["queued"]["data-value"]) == after["queued"] == 1
    assert [li["data-image"] for li in el.by_class["queued"]] == [image_id]
    assert int(el.by_id["fills-count"]["data-value"]) == after["active_fills"] == 1
    fill = el.by_id["fill-0"]
    assert fill["data-image"] == image_id and int(fill["data-length"]) == 3 * MiB
    assert 0 <= int(fill["data-filled"]) < 3 * MiB
    # Every reader of the fill: the one that started it and those that joined it.
    assert int(fill["data-waiters"]) == after["coalesced_waiters"] + 1 >= READERS + 1
    assert before["bytes_upstream"] <= int(el.by_id["stat-bytes_upstream"]["data-value"]) <= after["bytes_upstream"]
    top = el.by_class["top-image"]
    assert top and int(top[0]["data-hits"]) == 3  # debian-12, read three times
    for plot in ("plot-hit-ratio", "plot-bytes"):
        assert plot in el.by_id
    assert "ubuntu-24.04" in dom and "debian-12" in dom  # names, not only ids

    shot = screenshot(page, tmp_path / "status.png")
    assert shot.stat().st_size > 10_000
    wanted = os.environ.get("IMGPROXY_STATUS_SCREENSHOT")  # e.g. docs/status.png for the README
    if wanted:
        shutil.copyfile(shot, wanted)


def test_status_page_wants_an_admin_or_the_status_token(server_factory: Callable[..., ServerProcess]) -> None:
    from imgproxy.tokens import create_token

    proc = server_factory(config={"status_token": STATUS_TOKEN})
    member = create_token(proc.data_dir / "tokens.json", project="p1", roles=["member"])
    url = proc.url + "/status"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, params={"token": "not-a-token"}).status_code == 401
    assert httpx.get(url, params={"token": STATUS_TOKEN}).status_code == 200
    assert httpx.get(url, headers={"X-Auth-Token": STATUS_TOKEN}).status_code == 200
    r = httpx.get(url, headers={"X-Auth-Token": proc.admin_token})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-store"
    _poll(lambda: httpx.get(url, params={"token": member}).status_code != 401, "the new token was not read")
    forbidden = httpx.get(url, params={"token": member})
    assert forbidden.status_code == 403 and forbidden.json()["error"]["title"] == "Forbidden"
    # The token in the URL never reaches the request log.
    assert STATUS_TOKEN not in proc.log() and member not in proc.log()
