"""Crash rounds: kill -9 the whole service at random moments of a busy workload, then check it.

One data dir lives through every round. A round starts ``imgproxy serve --workers 2`` on it
(small chunks, a small cache so the pruner works, loops every second), runs a mixed workload
from client threads (uploads, whole and ranged downloads, images added by location from a
slow nginx, deletes, prunes, cleans, prefetches), kills every process of the tree with
SIGKILL after a random delay, restarts, and checks what a user and an operator rely on:

- every image the workload saw become ``active`` downloads whole with the sha512 it was
  uploaded with (and its record's ``os_hash_value``): each new image after the round it
  appeared in, and a sample of 25 older ones after every round;
- no image stays ``saving`` past one cleaner pass;
- every image whose DELETE was answered is gone, and so is its file in the store;
- after a cleaner pass the chunk files on disk are exactly what the cache index counts
  (``bytes_cached``), and no store file belongs to no image.

The harness reads the data dir only to count files; everything else goes over HTTP.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ..images import make_image
from ..systems.imgproxy import ImgproxySystem
from ..systems.nginx_systems import Upstream
from ..systems.procs import tree_pids, wait_gone

__all__ = ["CrashReport", "run_crashes"]

CHUNK = 64 * 1024
OCTET = {"Content-Type": "application/octet-stream"}


def _payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass
class CrashReport:
    rounds: int = 0
    crashes: int = 0
    uploads_done: int = 0
    locations_added: int = 0
    deletes_done: int = 0
    images_verified: int = 0
    bytes_verified: int = 0
    requests: int = 0
    violations: list[str] = field(default_factory=list)

    def violation(self, text: str) -> None:
        """Record ``text`` once (a state left wrong is seen again by every later check)."""
        if text not in self.violations:
            self.violations.append(text)

    def as_row(self) -> dict[str, object]:
        return {
            "rounds": self.rounds, "crashes": self.crashes, "uploads": self.uploads_done,
            "locations": self.locations_added, "deletes": self.deletes_done,
            "images_verified": self.images_verified, "bytes_verified": self.bytes_verified,
            "requests": self.requests, "violations": len(self.violations),
        }


@dataclass
class _Known:
    """What the workload knows to be true, shared by its threads (guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sha512: dict[str, str] = field(default_factory=dict)  # image id -> digest of its bytes
    maybe_active: set[str] = field(default_factory=set)  # answered 204/202: must end active or killed
    deleted: set[str] = field(default_factory=set)  # DELETE answered 204
    delete_tried: set[str] = field(default_factory=set)  # DELETE sent; its answer may be lost in a crash
    verified_once: set[str] = field(default_factory=set)  # read whole and right after some restart


class _Workload:
    """Client threads that keep the service busy until ``stop`` is set."""

    def __init__(self, url: str, known: _Known, files: list[tuple[str, str, int]], rng: random.Random,
                 report: CrashReport) -> None:
        self.url = url
        self.known = known
        self.files = files  # (location url, sha512, size) on the slow upstream
        self.rng = random.Random(rng.random())
        self.report = report
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, threads: int = 6) -> None:
        actions: list[Callable[[httpx.Client, random.Random], None]] = [
            self._upload, self._upload, self._download, self._download, self._add_location, self._admin,
        ]
        for n in range(threads):
            t = threading.Thread(target=self._loop, args=(actions[n % len(actions)], self.rng.random()), daemon=True)
            t.start()
            self._threads.append(t)

    def join(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(60)

    def _loop(self, action: Callable[[httpx.Client, random.Random], None], seed: float) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, timeout=httpx.Timeout(20.0, connect=2.0)) as http:
            while not self.stop.is_set():
                try:
                    action(http, rng)
                except (httpx.HTTPError, OSError):
                    time.sleep(0.02)  # the service is gone (the crash) or refused: try again
                with self.known.lock:
                    self.report.requests += 1

    def _create(self, http: httpx.Client) -> str:
        r = http.post("/v2/images", json={"name": "chaos", "disk_format": "raw", "container_format": "bare"})
        r.raise_for_status()
        return str(r.json()["id"])

    def _upload(self, http: httpx.Client, rng: random.Random) -> None:
        image_id = self._create(http)
        size = rng.choice([0, 1, CHUNK - 1, CHUNK, 3 * CHUNK + 5, rng.randrange(1, 40 * CHUNK)])
        data = _payload(size, rng.randrange(1 << 30))
        with self.known.lock:
            self.known.sha512[image_id] = hashlib.sha512(data).hexdigest()
        r = http.put(f"/v2/images/{image_id}/file", content=data, headers=OCTET)
        if r.status_code == 204:
            with self.known.lock:
                self.known.maybe_active.add(image_id)
                self.report.uploads_done += 1

    def _add_location(self, http: httpx.Client, rng: random.Random) -> None:
        url, sha, size = rng.choice(self.files)
        image_id = self._create(http)
        body: dict[str, object] = {"url": url}
        if rng.random() < 0.5:
            body["validation_data"] = {"os_hash_algo": "sha512", "os_hash_value": sha}
        with self.known.lock:
            self.known.sha512[image_id] = sha
        r = http.post(f"/v2/images/{image_id}/locations", json=body)
        if r.status_code == 202:
            with self.known.lock:
                self.known.maybe_active.add(image_id)
                self.report.locations_added += 1
            if "validation_data" in body:  # a verify pass rides along the first full read
                http.get(f"/v2/images/{image_id}/file")

    def _pick(self, rng: random.Random) -> str | None:
        with self.known.lock:
            live = sorted(self.known.maybe_active - self.known.deleted)
        return rng.choice(live) if live else None

    def _download(self, http: httpx.Client, rng: random.Random) -> None:
        image_id = self._pick(rng)
        if image_id is None:
            time.sleep(0.05)
            return
        headers = {}
        if rng.random() < 0.4:
            start = rng.randrange(0, 20 * CHUNK)
            headers["Range"] = f"bytes={start}-{start + rng.randrange(1, 6 * CHUNK)}"
        with http.stream("GET", f"/v2/images/{image_id}/file", headers=headers) as r:
            body = b"".join(r.iter_bytes())
        if r.status_code == 200 and body:
            with self.known.lock:
                expected = self.known.sha512.get(image_id)
            if expected is not None and hashlib.sha512(body).hexdigest() != expected:
                self._violation(f"image {image_id}: a complete 200 with wrong bytes ({len(body)} bytes)")

    def _admin(self, http: httpx.Client, rng: random.Random) -> None:
        roll = rng.random()
        image_id = self._pick(rng)
        if roll < 0.3 and image_id is not None:
            with self.known.lock:
                self.known.delete_tried.add(image_id)
            if http.delete(f"/v2/images/{image_id}").status_code == 204:
                with self.known.lock:
                    self.known.deleted.add(image_id)
                    self.report.deletes_done += 1
        elif roll < 0.5:
            http.post("/v2/cache/prune")
        elif roll < 0.7:
            http.post("/v2/cache/clean")
        elif image_id is not None:
            http.put(f"/v2/cache/{image_id}")
        time.sleep(0.02)

    def _violation(self, text: str) -> None:
        with self.known.lock:
            self.report.violation(text)


def _kill_tree(system: ImgproxySystem) -> None:
    """SIGKILL every process of the service at once, as a power cut would."""
    assert system.proc is not None
    pids = tree_pids(system.proc.pid)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    system.proc.wait(10)
    for pid in pids:
        wait_gone(pid, 10)
    system.proc = None
    system.pid = None


def _disk_chunk_bytes(data_dir: Path) -> int:
    root = data_dir / "cache" / "chunks"
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def _check(system: ImgproxySystem, known: _Known, report: CrashReport, settle: float) -> None:
    """The invariants of the module docstring, on a freshly restarted service."""
    http = httpx.Client(base_url=system.url, timeout=60)
    try:
        # Cleaner passes run every second; digest passes of location images resume at start.
        deadline = time.monotonic() + settle
        saving: list[str] = []
        while time.monotonic() < deadline:
            saving = [i["id"] for i in http.get("/v2/images", params={"status": "saving", "limit": 1000}).json()["images"]]
            if not saving:
                break
            time.sleep(0.2)
        for image_id in saving:
            report.violation(f"image {image_id} still saving {settle:.0f} s after the restart")
        with known.lock:
            deleted = set(known.deleted)
            candidates = sorted(known.maybe_active - deleted)
        # Every image is read whole once after the round it appeared in, then a sample of the
        # older ones each round: the work per round stays bounded as the rounds add images.
        fresh = [i for i in candidates if i not in known.verified_once]
        older = [i for i in candidates if i in known.verified_once]
        candidates = fresh + random.Random(len(candidates)).sample(older, min(len(older), 25))
        for image_id in deleted:
            if http.get(f"/v2/images/{image_id}").status_code != 404:
                report.violation(f"image {image_id} was deleted (204) but is still there")
        for image_id in candidates:
            r = http.get(f"/v2/images/{image_id}")
            if r.status_code == 404 and image_id in known.delete_tried:
                continue  # deleted by a DELETE whose answer the crash cut off
            record = r.json()
            if record.get("status") == "killed":
                continue  # a location whose pass was cut; nothing is served from it
            if record.get("status") != "active":
                report.violation(f"image {image_id} answered 204/202 but is {record.get('status')}")
                continue
            with http.stream("GET", f"/v2/images/{image_id}/file") as r:
                sha = hashlib.sha512()
                got = 0
                for piece in r.iter_bytes():
                    sha.update(piece)
                    got += len(piece)
            if r.status_code not in (200, 204) or sha.hexdigest() != known.sha512[image_id] or \
                    record.get("os_hash_value") != known.sha512[image_id]:
                report.violation(f"image {image_id}: download {r.status_code}, {got} bytes, digest differs")
                continue
            report.images_verified += 1
            report.bytes_verified += got
            known.verified_once.add(image_id)
        time.sleep(2.5)  # two cleaner passes
        stats = http.get("/v2/cache/stats").json()
        on_disk = _disk_chunk_bytes(system.data_dir)
        if on_disk != stats["bytes_cached"]:
            report.violation(f"chunk files hold {on_disk} bytes, the index counts {stats['bytes_cached']}")
        store = system.data_dir / "images"
        for path in store.iterdir() if store.exists() else []:
            if not path.is_file():
                continue
            r = http.get(f"/v2/images/{path.name}")
            if r.status_code == 404 or r.json().get("status") not in ("active", "deactivated", "saving"):
                report.violation(f"store file {path.name} belongs to no image with data")
    finally:
        http.close()


def run_crashes(work: Path, *, rounds: int, seed: int = 1, max_uptime: float = 2.0,
                settle: float = 30.0, log: Callable[[str], None] = print) -> CrashReport:
    """Run ``rounds`` crash rounds in ``work``; see the module docstring."""
    rng = random.Random(seed)
    report = CrashReport()
    upstream = Upstream(work / "upstream", work / "files", rate=4 * 1024 * 1024).start()
    system = ImgproxySystem(work / "imgproxy", workers=2, config={
        "chunk_size": CHUNK, "cache_max_size": 4 << 20, "prune_interval": 1, "clean_interval": 1,
        "prefetch_interval": 1, "stale_temp_age": 1, "image_size_cap": 64 << 20, "upstream_timeout": 5,
    })
    try:
        files = []
        for n in range(4):
            image = make_image(work / "files", f"loc{n}.img", rng.choice([3 * CHUNK + 7, 2 << 20, 5 << 20]))
            files.append((upstream.url_for(image), image.sha512, image.size))
        known = _Known()
        system.start()
        for n in range(rounds):
            workload = _Workload(system.url, known, files, rng, report)
            workload.start()
            time.sleep(rng.uniform(0.1, max_uptime))
            _kill_tree(system)
            report.crashes += 1
            workload.join()
            system.start()
            _check(system, known, report, settle)
            report.rounds += 1
            log(f"crash round {n + 1}/{rounds}: {report.as_row()}")
            for text in report.violations[-5:]:
                log(f"  violation: {text}")
    finally:
        system.stop()
        upstream.stop()
    return report
