"""The benchmark harness: its systems start and stop cleanly, it counts upstream bytes,
it catches a node that receives wrong bytes, and a quick one-scenario run writes its report.

Tiny sizes only; no timing assertions.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from bench.clients import Fetch, run_downloads
from bench.images import make_image
from bench.progress import Progress
from bench.scenarios.upload import _paired, _turns
from bench.servers.link import SharedLink
from bench.systems.base import System, free_port
from bench.systems.glance import GlanceSystem
from bench.systems.imgproxy import ImgproxySystem
from bench.systems.nginx_systems import NginxCache, NginxDirect, Upstream
from bench.systems.procs import is_running, tree_pids
from tests.requirements import require_glance_venv
from tests.swift_fixtures import start_swift

KiB = 1024


def _assert_stops_cleanly(system: System) -> None:
    assert system.pid is not None and is_running(system.pid)
    pids = tree_pids(system.pid)
    system.stop()
    assert system.pid is None
    assert not any(is_running(p) for p in pids), "a server process outlived stop()"


@pytest.fixture
def upstream(tmp_path: Path):
    up = Upstream(tmp_path / "up", tmp_path / "files").start()
    yield up
    up.stop()


def test_upstream_and_nginx_direct_start_serve_and_stop(tmp_path: Path, upstream: Upstream) -> None:
    image = make_image(tmp_path / "files", "a.img", 300 * KiB)
    direct = NginxDirect(tmp_path / "direct", tmp_path / "files").start()
    try:
        run = run_downloads([Fetch(direct.warm_url(image), image.sha512, image.size)])
        assert run.results[0]["ok"], run.results[0]
    finally:
        _assert_stops_cleanly(direct)
    _assert_stops_cleanly(upstream)


@pytest.mark.parametrize("slice_size", [0, 64 * KiB])
def test_nginx_cache_reads_upstream_once_and_counts_its_bytes(tmp_path: Path, upstream: Upstream, slice_size: int) -> None:
    image = make_image(tmp_path / "files", "b.img", 257 * KiB)
    cache = NginxCache(tmp_path / "cache", upstream.url, slice_size=slice_size).start()
    try:
        url = cache.cold_url(image, upstream.url_for(image, rate=4 << 20))
        run = run_downloads([Fetch(url, image.sha512, image.size) for _ in range(4)])
        assert all(r["ok"] for r in run.results), run.results
        assert upstream.bytes_sent() == image.size  # one fill, every body byte counted once
    finally:
        _assert_stops_cleanly(cache)


def test_shared_link_relays_every_byte_and_stops(tmp_path: Path, upstream: Upstream) -> None:
    # The herd's "shared" upstream: a relay whose connections share one rate. Its pacing
    # is measured by the harness, not here; here: bytes arrive intact, ranges too, and
    # the process goes away on stop.
    image = make_image(tmp_path / "files", "l.img", 300 * KiB)
    link = SharedLink(free_port(), upstream.url.removeprefix("http://"), 8 << 20, tmp_path / "link.log").start()
    try:
        url = f"{link.url}/{image.name}"
        run = run_downloads([Fetch(url, image.sha512, image.size)] * 3 + [Fetch(url, "", image.size, (1000, 1999))])
        assert all(r["ok"] for r in run.results[:3]), run.results
        assert run.results[3]["status"] == 206 and run.results[3]["bytes"] == 1000
        assert upstream.bytes_sent() == 3 * image.size + 1000
        assert link.proc is not None
        pid = link.proc.pid
    finally:
        link.stop()
    assert not is_running(pid)


def test_upstream_byte_count_matches_what_clients_received(tmp_path: Path, upstream: Upstream) -> None:
    image = make_image(tmp_path / "files", "c.img", 123_457)
    run = run_downloads(
        [Fetch(upstream.url_for(image), image.sha512, image.size)] * 3
        + [Fetch(upstream.url_for(image), "", image.size, (1000, 1999))]
    )
    received = sum(r["bytes"] for r in run.results)
    assert received == 3 * image.size + 1000
    assert upstream.bytes_sent() == received


def test_a_node_that_receives_a_wrong_byte_is_caught(tmp_path: Path, upstream: Upstream) -> None:
    image = make_image(tmp_path / "files", "d.img", 64 * KiB)
    # Serve a deliberately different file under the image's name: one byte flipped.
    data = bytearray(image.path.read_bytes())
    data[40_000] ^= 0xFF
    image.path.write_bytes(bytes(data))
    run = run_downloads([Fetch(upstream.url_for(image), image.sha512, image.size)])
    result = run.results[0]
    assert not result["ok"]
    assert "sha512 mismatch" in result["error"]


def test_imgproxy_system_starts_and_stops(tmp_path: Path) -> None:
    system = ImgproxySystem(tmp_path / "imgproxy", workers=2).start()
    try:
        assert len(tree_pids(system.pid)) >= 2  # the master and its workers are all metered
    finally:
        _assert_stops_cleanly(system)


def test_glance_starts_serves_a_location_and_stops(tmp_path: Path, upstream: Upstream) -> None:
    require_glance_venv()
    image = make_image(tmp_path / "files", "e.img", 200 * KiB)
    glance = GlanceSystem(tmp_path / "glance", processes=1).start()
    try:
        url = glance.cold_url(image, upstream.url_for(image))
        run = run_downloads([Fetch(url, image.sha512, image.size)])
        assert run.results[0]["ok"], run.results[0]
    finally:
        _assert_stops_cleanly(glance)


def test_quick_run_of_one_scenario_writes_json_markdown_and_png(tmp_path: Path) -> None:
    import dataclasses

    from bench.__main__ import run_bench
    from bench.runner import Profile

    # Shrink the quick profile further: this checks the plumbing, not the speed.
    tiny = dataclasses.replace(Profile.make(True), warm_image_size=256 * KiB, warm_nodes=(2,))
    out = tmp_path / "report"
    run_bench(out, quick=True, only=["warm_reads"], systems=["nginx-direct", "nginx-slice-lock"],
              progress=Progress(quiet=True), profile=tiny, work=tmp_path / "work")
    assert (out / "results.json").exists() and (out / "results.md").exists() and (out / "warm_reads.png").exists()
    data = json.loads((out / "results.json").read_text())
    rows = data["scenarios"][0]["rows"]
    assert {r["system"] for r in rows} == {"nginx-direct", "nginx-slice-lock"}
    assert all(r["status"] == "ok" for r in rows), rows
    assert "| nginx-direct |" in (out / "results.md").read_text()
    assert (out / "warm_reads.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cached_download_compares_imgproxy_with_nginx_and_checks_every_body(tmp_path: Path) -> None:
    import dataclasses

    from bench.__main__ import parse_size, run_bench
    from bench.runner import Profile

    assert parse_size("1GiB") == 1 << 30 and parse_size("256MiB") == 256 << 20 and parse_size("4096") == 4096
    tiny = dataclasses.replace(Profile.make(True), cached_size=parse_size("300KiB"), cached_streams=(1, 3))
    out = tmp_path / "report"
    results, _ = run_bench(out, quick=True, only=["cached_download"], systems=["nginx-direct", "imgproxy-1w"],
                           progress=Progress(quiet=True), profile=tiny, work=tmp_path / "work")
    rows = results[0].rows
    assert [(r["system"], r["N"]) for r in rows] == [  # systems take turns at each N
        ("nginx-direct", 1), ("imgproxy-1w", 1), ("nginx-direct", 3), ("imgproxy-1w", 3)]
    assert all(r["status"] == "ok" and r["failures"] == 0 for r in rows), rows
    assert all(r["vs_nginx"] is not None and r["peak_rss_MiB"] > 0 for r in rows)


def _tiny_run(tmp_path: Path, only: list[str], systems: list[str], **sizes: object):
    import dataclasses

    from bench.__main__ import run_bench
    from bench.runner import Profile

    tiny = dataclasses.replace(Profile.make(True), **sizes)
    results, _ = run_bench(tmp_path / "report", quick=True, only=only, systems=systems,
                           progress=Progress(quiet=True), profile=tiny, work=tmp_path / "work")
    return {r.name: r for r in results}


def test_upload_takes_turns_with_the_digest_floor_and_checks_both_digests(tmp_path: Path) -> None:
    results = _tiny_run(tmp_path, ["upload"], ["imgproxy-1w", "floor"], upload_sizes=(3 * 1024 * KiB + 5,), repeats=2)
    rows = {r["system"]: r for r in results["upload"].rows}
    assert set(rows) == {"imgproxy-1w", "floor"}, results["upload"].rows
    for row in rows.values():  # each stored (or sink-computed) md5 and sha512 equal the file's own
        assert row["status"] == "ok" and row["digests_ok"] and row["repeats"] == 2, row
        assert row["MBps"] > 0 and row["server_cpu_s"] > 0, row
        assert row["vs_glance"] is None, row  # no Glance in this run: no ratio made up
    mine, floor = rows["imgproxy-1w"], rows["floor"]
    low, high = mine["MBps_min"] / floor["MBps_max"], mine["MBps_max"] / floor["MBps_min"]
    assert low - 1e-3 <= mine["of_floor"] <= high + 1e-3, rows  # a median of the two repeats' ratios
    assert "of_floor" not in floor and "vs_1w" not in mine, rows  # no 2-worker run: no ratio made up
    assert any("floor" in note for note in results["upload"].notes)


def test_upload_pairs_compare_uploads_of_the_same_repeat() -> None:
    def taken(*speeds: tuple[float, int]) -> list[dict[str, object]]:
        return [{"MBps": mbps, "http": code} for mbps, code in speeds]

    # The machine slows down in repeat 2 for both: per-repeat ratios 1.1, 1.1, 0.9 (median 1.1), while the
    # ratio of the medians is 360/400 = 0.9. A refused upload (413) leaves its repeat out.
    samples = {"imgproxy-2w": taken((440, 204), (330, 204), (360, 204), (500, 413)),
               "imgproxy-1w": taken((400, 204), (300, 204), (400, 204), (500, 204))}
    assert _paired(samples, "imgproxy-2w", "imgproxy-1w") == 1.1
    assert _paired(samples, "imgproxy-2w", "floor") is None


def test_upload_turns_put_each_system_before_and_after_each_other_alike() -> None:
    names = ["imgproxy-1w", "imgproxy-2w", "glance", "floor"]
    follows: dict[tuple[str, str], int] = {}
    for repeat in range(2 * len(names)):
        order = _turns(names, repeat)
        assert sorted(order) == sorted(names), order  # everyone uploads once a repeat
        for before, after in zip(order, order[1:]):
            follows[before, after] = follows.get((before, after), 0) + 1
    for (before, after), times in follows.items():  # 2w right after 1w as often as 1w right after 2w
        assert follows.get((after, before)) == times, (before, after, follows)
    assert {_turns(names, r)[0] for r in range(0, 2 * len(names), 2)} == set(names)  # each goes first


def test_cold_storm_and_herd_read_each_upstream_byte_once_through_imgproxy_and_nginx_slice(tmp_path: Path) -> None:
    results = _tiny_run(
        tmp_path, ["boot_storm", "herd"], ["imgproxy-1w", "nginx-slice-lock"],
        storm_nodes=(3,), storm_images=(1,), storm_image_size=300 * KiB, upstream_rate=4 << 20,
        herd_clients=4, herd_image_size=600 * KiB, herd_rate=4 << 20,
    )
    storm, herd = results["boot_storm"].rows, results["herd"].rows
    assert [(r["system"], r["N"]) for r in storm] == [("imgproxy-1w", 3), ("nginx-slice-lock", 3)]
    assert [(r["system"], r["client"], r["upstream"]) for r in herd] == [
        (system, client, upstream)
        for client, upstream in [("sha512", "per-conn"), ("curl", "per-conn"), ("curl", "shared")]
        for system in ("imgproxy-1w", "nginx-slice-lock")
    ]
    for row in storm + herd:
        assert row["status"] == "ok" and row["failures"] == 0, row
        assert row["upstream_ratio"] == 1.0, row  # one fill, shared by every node
    assert all(r["alone_s"] and r["vs_alone"] and r["ttfb_p99_s"] is not None for r in herd)
    assert all(r["cached_s"] and r["vs_cached"] for r in herd)  # the same herd again, on the cached image


def test_growth_prunes_a_shrunk_cache_while_a_node_reads(tmp_path: Path) -> None:
    results = _tiny_run(tmp_path, ["growth"], ["imgproxy-1w"],
                        growth_images=12, growth_image_size=64 * KiB, growth_cache_max=1 << 20)
    rows = results["growth"].rows
    assert [r["system"] for r in rows] == ["imgproxy-1w", "glance"]
    row = rows[0]
    assert row["status"] == "ok" and row["prune_http"] == 200, row
    assert row["cached_after_MiB"] <= row["shrunk_max_MiB"] and row["pruned_MiB"] > 0, row
    assert rows[1]["status"].startswith("not run:")


def test_stores_reads_each_real_store_through_imgproxy_and_directly(tmp_path: Path) -> None:
    rows = _tiny_run(tmp_path, ["stores"], [], stores_image_size=6 << 20)["stores"].rows
    assert [r["store"] for r in rows] == ["s3 (rclone)", "swift", "s3 (swift s3api)"]
    for row in rows:
        assert row["status"] == "ok", row
        assert row["direct_s"] > 0 and row["imgproxy_s"] > 0 and row["server_cpu_s_per_GB"] > 0
        # A floor, not above the time it bounds. CPU times come from /proc in 10 ms ticks, summed
        # over up to a dozen processes (Swift's servers and workers, imgproxy's tree), against a
        # read of a few ms at this size: allow 0.1 s of tick rounding (seen: 0.03 s vs 0.02 s).
        assert 0 < row["cpu_floor_s"] <= row["imgproxy_s"] * 1.2 + 0.1, row
        assert 0 <= row["store_busiest_s"] <= row["cpu_floor_s"], row  # one store process's share of it


def test_a_swift_with_workers_serves_and_stops_with_every_worker(tmp_path: Path) -> None:
    """The stores scenario runs Swift's proxy and object server with a worker per core: stopping
    Swift leaves none behind."""
    pids: list[int] = []
    swift = start_swift(tmp_path / "swift", workers=2)
    try:
        pids = swift.all_pids()
        for name in ("proxy", "object"):
            assert len(tree_pids(swift.procs[name].pid)) == 3, name  # the server and its two workers
        for _ in range(4):  # requests land on either worker
            head = httpx.head(swift.storage_url, headers={"X-Auth-Token": swift.token()}, timeout=10)
            assert head.status_code in (200, 204)
    finally:
        swift.stop()
    assert len(pids) == 8  # four servers, two workers each for the proxy and the object server
    assert [pid for pid in pids if is_running(pid)] == []


def test_edge_sends_each_central_byte_once_whatever_the_nodes(tmp_path: Path) -> None:
    require_glance_venv()
    rows = _tiny_run(tmp_path, ["edge"], [], edge_nodes=4, edge_image_size=2 << 20)["edge"].rows
    assert [(r["central"], r["path"]) for r in rows] == [
        ("imgproxy", "direct"), ("imgproxy", "edge"), ("glance", "direct"), ("glance", "edge")]
    for row in rows:
        assert row["status"] == "ok", row
    # The image once, plus the small API answers (image shows) the edge asks for: a second copy
    # of a 2 MiB image would be 2.0.
    assert all(1.0 <= r["central_ratio"] <= 1.05 for r in rows if r["path"] == "edge"), rows
    assert all(r["central_ratio"] >= 4 for r in rows if r["path"] == "direct")


def test_metadata_drives_show_and_list_with_wrk_beside_glance_and_a_baseline_checkout(tmp_path: Path) -> None:
    require_glance_venv()
    from bench.wrk import wrk_binary

    wrk_binary()  # raises with the install command when missing
    root = Path(__file__).resolve().parent.parent
    results = _tiny_run(tmp_path, ["metadata"], ["imgproxy-1w", "glance"], meta_images=12, meta_step_seconds=1.0,
                        meta_connections=(4,), meta_baseline=str(root))
    rows = results["metadata"].rows
    assert sorted((r["system"], r["op"]) for r in rows) == sorted(
        (system, op) for system in ("imgproxy-1w", "glance", "baseline-1w", "baseline-2w")
        for op in ("create", "show", "list-100", "list-100-filtered"))
    for row in rows:
        assert row["requests"] > 0 and row["req_per_s"] > 0 and row["images"] == 12, row
        assert row["status"].startswith("ok"), row  # Glance's creates may be made again (sqlite locks)
        if row["op"] != "create":
            assert row["status"] == "ok" and row["errors"] == 0, row
            assert row["vs_glance"] is not None and row["p99_ms"] is not None, row
    assert all(r["vs_glance"] == 1.0 for r in rows if r["system"] == "glance" and r["op"] != "create")


def test_import_scenario_imports_with_both_methods_on_imgproxy_and_glance(tmp_path: Path) -> None:
    require_glance_venv()
    rows = _tiny_run(tmp_path, ["import"], [], import_size=2 << 20)["import"].rows
    assert [(r["system"], r["method"]) for r in rows] == [
        ("imgproxy", "web-download"), ("imgproxy", "glance-direct"), ("glance", "web-download"),
        ("glance", "glance-direct")]
    for row in rows:
        assert row["status"] == "ok" and row["digests_ok"] and row["total_s"] > 0, row
        # Only Glance's imports get a second try (its sqlite's "database is locked").
        assert row["attempts"] == 1 if row["system"] == "imgproxy" else row["attempts"] in (1, 2), row
