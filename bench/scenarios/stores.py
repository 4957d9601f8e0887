"""Scenario "stores": a cold image read through imgproxy from each real store, vs the store's own client.

For each store kind (S3 on ``rclone serve s3``, Swift all-in-one, S3 on Swift's s3api) an
imgproxy whose store is that bucket or container takes one upload; then, ``repeats`` times
(a pair), the image is dropped from its cache and the same object is read twice, cold each time:

- ``imgproxy``: one curl downloads the image (stored by imgproxy: on S3 a multipart upload of
  32 MiB parts, on Swift a static large object of 200 MiB segments, the stores' defaults): the
  cache fills its 4 MiB chunks, each verified against its address in the manifest, by parallel
  ranged reads of a few chunks each (the store kind's ``read_chunks``: 4 for S3 and Swift, see
  :func:`backends.base.read_chunks`);
- ``direct``: the store's own client reads the object imgproxy wrote, once, sequentially, to
  nothing (obstore for S3; python-swiftclient's ``swift download`` for Swift).

``vs_direct`` = direct seconds / imgproxy seconds of a pair (target >= 1.0: the chunked parallel
fill is at least as fast as one sequential read); rows give medians over the pairs, and the
lowest and highest ``vs_direct``. ``server_cpu_s_per_GB`` is imgproxy's process tree;
``store_cpu_s_per_GB`` the store's own processes (rclone; Swift's proxy, object, container and
account servers) during imgproxy's read and during the direct read: on 2 cores the store
competes with imgproxy for CPU, and each ranged GET costs it a request.
``cpu_floor_s`` is the least time the machine's cores could do imgproxy's read in, given
the CPU the store and imgproxy spent on it (the curl's own CPU not even counted), and at least
``store_busiest_s``, the CPU of the store's busiest process during that read (one process runs
on one core): where it exceeds ``direct_s``, no overlap of parallel reads can bring ``vs_direct``
to 1.0 here. Swift's proxy and object server run a worker per core each, as production Swift's
``workers = auto`` does: with one process each, every ranged read of a parallel fill queued
behind one core while the direct read, one request, lost nothing.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from typing import Any

import httpx

from ..images import make_image
from ..runner import RunContext, ScenarioResult
from ..systems.base import ImageFile
from ..systems.imgproxy import ImgproxySystem
from ..systems.procs import cpu_seconds
from .cached_download import curl_many

__all__ = ["run"]

NAME = "stores"
SYSTEMS: tuple[str, ...] = ()  # starts its own stores and imgproxy instances


def _read_s3_direct(endpoint: str, region: str, key_id: str, secret: str, bucket: str, key: str) -> float:
    from obstore.store import S3Store

    store = S3Store(bucket, config={"endpoint": endpoint, "region": region, "access_key_id": key_id,
                                    "secret_access_key": secret}, client_options={"allow_http": True})
    t0 = time.perf_counter()
    got = 0
    for piece in store.get(key).stream(min_chunk_size=1 << 20):  # type: ignore[attr-defined]
        got += len(piece)
    return time.perf_counter() - t0


def _read_swift_direct(venv_bin: str, auth_url: str, user: str, key: str, container: str, name: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([f"{venv_bin}/swift", "-A", auth_url, "-U", user, "-K", key, "download", container, name,
                    "-o", "/dev/null"], check=True, capture_output=True, timeout=1800)
    return time.perf_counter() - t0


def _store_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pids).values())


def _busiest(before: dict[int, float], after: dict[int, float]) -> float:
    """The most CPU one store process spent between the two readings."""
    return max((after[pid] - before.get(pid, 0.0) for pid in after), default=0.0)


def _through_imgproxy(ctx: RunContext, root: Any, config: dict[str, Any], image: ImageFile,
                      read_direct: Any, store_pids: list[int]) -> dict[str, Any]:
    """Upload ``image`` into the store through imgproxy; then, ``repeats`` times: drop it from
    the cache, read it cold through imgproxy, and read the object imgproxy wrote with the
    store's own client (``read_direct(image_id) -> seconds``). Returns the figures (medians
    over the pairs, and the spread of vs_direct); ``store_pids`` are the store's processes,
    whose CPU is counted over both reads of each pair."""
    system = ImgproxySystem(root, workers=1, config={**config, "prune_interval": 0, "clean_interval": 0})
    system.start()
    try:
        with httpx.Client(base_url=system.url, timeout=1800) as http:
            image_id = http.post("/v2/images", json={"name": image.name, "disk_format": "raw",
                                                     "container_format": "bare"}).json()["id"]
            with image.path.open("rb") as f:
                r = http.put(f"/v2/images/{image_id}/file", content=f,
                             headers={"Content-Type": "application/octet-stream"})
            if r.status_code != 204:
                return {"error": f"upload answered {r.status_code}: {r.text[:200]}"}
            pairs = []
            for _ in range(max(1, ctx.profile.repeats)):
                if http.delete(f"/v2/cache/{image_id}").status_code != 204:
                    return {"error": "could not evict the image from the cache"}
                pair = _pair(ctx, system, image, image_id, read_direct, store_pids)
                if "error" in pair:
                    return pair
                pairs.append(pair)
        summary = {key: statistics.median(p[key] for p in pairs) for key in pairs[0]}
        ratios = [p["vs_direct"] for p in pairs]
        return {**summary, "vs_direct_min": min(ratios), "vs_direct_max": max(ratios), "pairs": len(pairs)}
    finally:
        system.stop()


def _pair(ctx: RunContext, system: ImgproxySystem, image: ImageFile, image_id: str, read_direct: Any,
          store_pids: list[int]) -> dict[str, Any]:
    """One cold read through imgproxy, then one direct read."""
    gb = image.size / 1e9
    per_process = cpu_seconds(store_pids)
    with ctx.metered(system) as usage:
        [client] = curl_many(f"{system.url}/v2/images/{image_id}/file", 1, timeout=1800)
    after = cpu_seconds(store_pids)
    store_through, busiest = sum(after.values()) - sum(per_process.values()), _busiest(per_process, after)
    if not client["ok"] or client["bytes"] != image.size:
        return {"error": f"download: {client.get('error') or client.get('bytes')} bytes"}
    store_before = _store_cpu(store_pids)
    direct = read_direct(image_id)
    store_direct = _store_cpu(store_pids) - store_before
    return {"direct_s": direct, "imgproxy_s": client["total"], "vs_direct": direct / client["total"],
            "cpu_s_per_GB": usage.cpu_s / gb, "rss_MiB": usage.peak_rss / (1 << 20),
            "store_through": store_through / gb, "store_direct": store_direct / gb,
            "floor_s": max((store_through + usage.cpu_s) / (os.cpu_count() or 1), busiest), "busiest_s": busiest}


def _row(result: ScenarioResult, store: str, through: dict[str, Any], size: int) -> None:
    if "error" in through:
        result.rows.append({"store": store, "status": f"FAILED: {through['error']}"})
        result.failures.append(f"stores {store}: {through['error']}")
        return
    result.rows.append({
        "store": store, "size_MiB": size >> 20, "direct_s": round(through["direct_s"], 2),
        "imgproxy_s": round(through["imgproxy_s"], 2), "vs_direct": round(through["vs_direct"], 2),
        "vs_direct_min": round(through["vs_direct_min"], 2), "vs_direct_max": round(through["vs_direct_max"], 2),
        "server_cpu_s_per_GB": round(through["cpu_s_per_GB"], 3), "peak_rss_MiB": round(through["rss_MiB"], 1),
        "store_cpu_s_per_GB": f"{through['store_through']:.2f} / {through['store_direct']:.2f}",
        "cpu_floor_s": round(through["floor_s"], 2), "store_busiest_s": round(through["busiest_s"], 2),
        "pairs": through["pairs"], "status": "ok",
    })


def run(ctx: RunContext) -> ScenarioResult:
    from ..servers.rclone import RcloneS3Server
    from ..servers.swift import SwiftServer, swift_venv, swift_venv_ready

    size = ctx.profile.stores_image_size
    result = ScenarioResult(
        NAME, f"Cold {size >> 20} MiB read from each store: imgproxy (cache fill) vs the store's own client",
        ["store", "size_MiB", "direct_s", "imgproxy_s", "vs_direct", "vs_direct_min", "vs_direct_max",
         "server_cpu_s_per_GB", "peak_rss_MiB", "store_cpu_s_per_GB", "cpu_floor_s", "store_busiest_s", "pairs",
         "status"],
        plot={"x": "store", "series": "store", "panels": [
            {"y": "vs_direct", "ylabel": "direct time / imgproxy time"},
            {"y": "server_cpu_s_per_GB", "ylabel": "imgproxy CPU s per GB"},
        ]},
    )
    if shutil.which("curl") is None:
        result.not_run("all", "curl is not installed")
        return result
    work = ctx.work / "stores"
    image = make_image(work / "files", "store.img", size)
    try:
        ctx.progress.step("rclone serve s3")
        rclone = RcloneS3Server(work / "rclone", buckets=("imgproxy",)).start()
        try:
            s3 = {"endpoint": rclone.endpoint, "region": rclone.region, "access_key": rclone.access_key,
                  "secret_key": rclone.secret_key, "allow_http": True}
            through = _through_imgproxy(
                ctx, work / "imgproxy-rclone", {"store": "s3://imgproxy/images", "s3": s3}, image,
                lambda image_id: _read_s3_direct(rclone.endpoint, rclone.region, rclone.access_key,
                                                 rclone.secret_key, "imgproxy", f"images/{image_id}"),
                [rclone.pid] if rclone.pid is not None else [])
            _row(result, "s3 (rclone)", through, size)
        finally:
            rclone.stop()
        if not swift_venv_ready():
            result.not_run("swift", "the Swift venv is missing: python -m bench setup-swift")
            return result
        ctx.progress.step("swift all-in-one")
        swift = SwiftServer(work / "swift", memcached=True, workers=os.cpu_count() or 1).start()
        try:
            token = swift.token()
            swift_pids = swift.all_pids()
            for container in ("images", "imgproxy"):
                httpx.put(f"{swift.storage_url}/{container}", headers={"X-Auth-Token": token}, timeout=30).raise_for_status()
            opts = {"auth_url": swift.auth_url, "user": swift.user, "key": swift.key}
            through = _through_imgproxy(
                ctx, work / "imgproxy-swift", {"store": "swift://images", "swift": opts}, image,
                lambda image_id: _read_swift_direct(str(swift_venv() / "bin"), swift.auth_url, swift.user, swift.key,
                                                    "images", image_id), swift_pids)
            _row(result, "swift", through, size)
            s3 = swift.s3
            opts3 = {"endpoint": s3.endpoint, "region": s3.region, "access_key": s3.access_key,
                     "secret_key": s3.secret_key, "allow_http": True}
            through = _through_imgproxy(
                ctx, work / "imgproxy-swift-s3", {"store": "s3://imgproxy/images", "s3": opts3}, image,
                lambda image_id: _read_s3_direct(s3.endpoint, s3.region, s3.access_key, s3.secret_key, "imgproxy",
                                                 f"images/{image_id}"), swift_pids)
            _row(result, "s3 (swift s3api)", through, size)
        finally:
            swift.stop()
    finally:
        image.path.unlink(missing_ok=True)
    result.notes.append("Target (issue 8): vs_direct >= 1.0 for every store. direct: one sequential read by the "
                        "store's own client (obstore for S3, python-swiftclient for Swift), to nothing; imgproxy: "
                        "a cold download of an image it stored (S3: a multipart upload of 32 MiB parts; Swift: a static "
                        "large object of 200 MiB segments), the cache filling 4 MiB chunks, each verified (xxh3) "
                        "against the manifest, by parallel ranged reads of 4 chunks each. Both read the same object; "
                        "Swift's proxy checks the MD5 of each part or segment it serves whole, which a ranged read "
                        "inside one skips. store_cpu_s_per_GB: the store's own "
                        "processes during imgproxy's read / during the direct read (Swift's all-in-one runs with a "
                        "memcached, as production Swift does; each ranged GET still costs its proxy and object "
                        "server a request). cpu_floor_s: (store CPU + imgproxy CPU during imgproxy's read) / "
                        "cores, and at least store_busiest_s (the CPU of the store's busiest process in that read, "
                        "which runs on one core): the least time this machine could do that read in.")
    return result
