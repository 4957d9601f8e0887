"""Request ids, one log line per request (text and JSON), and the cache outcome of data reads."""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.server import ServerProcess

KiB = 1024
CHUNK = 64 * KiB
SIZE = 4 * CHUNK + 1000  # five chunks, the last one short


def _access_lines(proc: ServerProcess, request_id: str, timeout: float = 5.0) -> list[str]:
    """The server's request lines naming ``request_id`` (a line follows the last byte sent)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in proc.log().splitlines() if request_id in line and "imgproxy.access" in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def _fields(line: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in line.split() if "=" in pair)


def _image(api: httpx.Client, data: bytes) -> str:
    r = api.post("/v2/images", json={"name": "ops-access", "disk_format": "raw", "container_format": "bare"})
    image_id = str(r.json()["id"])
    r = api.put(f"/v2/images/{image_id}/file", content=data, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 204, r.text
    return image_id


def _wait_fills(api: httpx.Client, count: int, timeout: float = 10.0) -> None:
    """Until ``count`` fills have stored their chunk (a fill outlives the response it serves)."""
    deadline = time.monotonic() + timeout
    while api.get("/v2/cache/stats").json()["fills"] < count:
        assert time.monotonic() < deadline, "fills did not finish"
        time.sleep(0.02)


def test_every_answer_carries_a_request_id(server: ServerProcess, admin: httpx.Client) -> None:
    ok = admin.get("/versions")
    missing = admin.get("/v2/images/00000000-0000-0000-0000-000000000000")
    anonymous = httpx.get(server.url + "/v2/images")
    image_id = admin.post("/v2/images", json={"name": "request-ids"}).json()["id"]
    shown = [admin.get(f"/v2/images/{image_id}") for _ in range(300)]  # past a pool of random bytes
    answers = [(ok, 200), (missing, 404), (anonymous, 401), *((r, 200) for r in shown)]
    for r, status in answers:
        assert r.status_code == status
        assert re.fullmatch(r"req-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                            r.headers["x-openstack-request-id"]), r.headers
    assert len({r.headers["x-openstack-request-id"] for r, _ in answers}) == len(answers)


def test_a_clients_own_id_is_kept_and_logged(server: ServerProcess, admin: httpx.Client) -> None:
    mine = f"req-{'1' * 8}-client-{time.time_ns()}"
    r = admin.get("/v2.1/images", params={"limit": 1}, headers={"X-Openstack-Request-Id": mine})
    assert r.status_code == 200 and r.headers["x-openstack-request-id"] == mine
    (line,) = _access_lines(server, mine)
    fields = _fields(line)
    assert fields["method"] == "GET" and fields["route"] == "/v2/images" and fields["status"] == "200"
    assert fields["path"] == "/v2/images"  # the minor version is gone, the query never logged
    assert int(fields["bytes"]) == len(r.content) and float(fields["duration_s"]) >= 0
    assert fields["cache"] == "-"
    assert "uvicorn.access" not in server.log()  # uvicorn's own access log stays off


def test_an_unsafe_client_id_is_replaced(admin: httpx.Client) -> None:
    for bad in ("has space", "x" * 200, "-leading-dash", "quote\"d"):
        got = admin.get("/versions", headers={"X-Openstack-Request-Id": bad}).headers["x-openstack-request-id"]
        assert got != bad and got.startswith("req-")


def test_cache_outcome_of_data_reads(server_factory: Callable[..., ServerProcess]) -> None:
    # The file store cached like a remote one: read in place, a local image has no misses.
    proc = server_factory(config={"chunk_size": CHUNK, "readahead_chunks": 0, "prefetch_interval": 0,
                                  "file": {"in_place": False}})
    data = random.Random(11).randbytes(SIZE)  # distinct chunks: none is a hit by sharing another's address
    with httpx.Client(base_url=proc.url, headers={"X-Auth-Token": proc.admin_token}, timeout=30) as api:
        image_id = _image(api, data)
        assert api.delete(f"/v2/cache/{image_id}").status_code == 204  # cold again

        def read(name: str, headers: dict[str, str] | None = None) -> dict[str, str]:
            rid = f"req-{name}-{time.time_ns()}"
            r = api.get(f"/v2/images/{image_id}/file", headers={"X-Openstack-Request-Id": rid, **(headers or {})})
            assert r.status_code in (200, 206)
            (line,) = _access_lines(proc, rid)
            fields = _fields(line)
            assert fields["route"] == "/v2/images/{image_id}/file" and int(fields["bytes"]) == len(r.content)
            return fields

        assert read("first-chunk", {"Range": f"bytes=0-{CHUNK - 1}"})["cache"] == "miss"
        _wait_fills(api, 1)
        assert read("whole-cold-rest")["cache"] == "partial"  # chunk 0 cached, the rest filled
        _wait_fills(api, 5)
        whole = read("whole-warm")
        assert whole["cache"] == "hit" and whole["status"] == "200" and int(whole["bytes"]) == SIZE
        meta = api.get(f"/v2/images/{image_id}", headers={"X-Openstack-Request-Id": "req-meta-1"})
        assert meta.status_code == 200 and _fields(_access_lines(proc, "req-meta-1")[0])["cache"] == "-"


def test_json_log_lines(server_factory: Callable[..., ServerProcess]) -> None:
    proc = server_factory(config={"log_format": "json"})
    with httpx.Client(base_url=proc.url, headers={"X-Auth-Token": proc.admin_token}, timeout=30) as api:
        image_id = _image(api, b"j" * 5000)
        rid = f"req-json-{time.time_ns()}"
        assert api.get(f"/v2/images/{image_id}/file", headers={"X-Openstack-Request-Id": rid}).status_code == 200
        assert api.get("/v2/images/nope", headers={"X-Openstack-Request-Id": rid + "-404"}).status_code == 404
    missing_line = _access_lines(proc, rid + "-404")  # a line is written once its answer is sent
    docs: list[dict[str, Any]] = [json.loads(line) for line in _access_lines(proc, rid) + missing_line]
    data_line = next(d for d in docs if d["request_id"] == rid)
    assert data_line["logger"] == "imgproxy.access" and data_line["level"] == "info"
    assert {k: data_line[k] for k in ("method", "route", "status", "bytes", "cache")} == {
        "method": "GET", "route": "/v2/images/{image_id}/file", "status": 200, "bytes": 5000, "cache": "hit"}
    assert isinstance(data_line["duration_s"], float) and data_line["path"] == f"/v2/images/{image_id}/file"
    missing = next(d for d in docs if d["request_id"] == rid + "-404")
    assert missing["status"] == 404 and missing["route"] == "/v2/images/{image_id}"
    # Every line of the log is JSON, the service's own and uvicorn's alike.
    for line in proc.log().splitlines():
        if line.startswith("{"):
            json.loads(line)
        else:
            assert line.startswith("imgproxy: "), line  # the CLI's own prints (the admin token)


def test_image_show_answers_logs_and_counts_as_its_route(server: ServerProcess, admin: httpx.Client,
                                                        client_for: Callable[..., httpx.Client]) -> None:
    # Image show is answered before the router (from the stored view): what a client sees,
    # the request line and the metrics are those of the route that HEAD still goes through.
    created = admin.post("/v2/images", json={"name": "show-path", "visibility": "private"})
    image_id = created.json()["id"]
    rid = f"req-show-{time.time_ns()}"
    shown = admin.get(f"/v2.1/images/{image_id.upper()}", headers={"X-Openstack-Request-Id": rid})
    head = admin.head(f"/v2/images/{image_id}")
    assert shown.status_code == head.status_code == 200
    assert shown.json() == admin.get(f"/v2/images/{image_id}").json() and shown.json()["id"] == image_id
    for name in ("content-type", "content-length"):
        assert shown.headers[name] == head.headers[name]
    assert shown.headers["x-openstack-request-id"] == rid
    fields = _fields(_access_lines(server, rid)[0])
    assert fields["route"] == "/v2/images/{image_id}" and fields["status"] == "200"
    assert int(fields["bytes"]) == len(shown.content) and fields["path"] == f"/v2/images/{image_id.upper()}"
    # Another project's private image is not found, never forbidden; no token, 401.
    other = client_for("show-path-other", "member")
    hidden = other.get(f"/v2/images/{image_id}", headers={"X-Openstack-Request-Id": rid + "-other"})
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == 404
    assert _fields(_access_lines(server, rid + "-other")[0])["route"] == "/v2/images/{image_id}"
    assert httpx.get(f"{server.url}/v2/images/{image_id}").status_code == 401
    shows = re.compile(r'imgproxy_request_duration_seconds_count\{method="GET",route="/v2/images/\{image_id\}",'
                       r'status="(\d+)"\} ([0-9.]+)')
    before = {status: float(n) for status, n in shows.findall(admin.get("/metrics").text)}
    for _ in range(3):
        assert admin.get(f"/v2/images/{image_id}").status_code == 200
    after = {status: float(n) for status, n in shows.findall(admin.get("/metrics").text)}
    assert after["404"] >= 1 and after["200"] == before["200"] + 3, (before, after)
