"""GET /healthcheck as Glance answers it (oslo.middleware, disable_by_file) and the readiness check."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.server import ServerProcess, free_port


def test_healthcheck_and_its_disable_file(server_factory: Callable[..., ServerProcess], tmp_path: Path) -> None:
    flag = tmp_path / "healthcheck_disable"
    proc = server_factory(config={"healthcheck_disable_file": str(flag)})
    url = proc.url + "/healthcheck"
    ok = httpx.get(url)  # no token: a load balancer has none
    assert (ok.status_code, ok.text, ok.headers["content-type"]) == (200, "OK", "text/plain; charset=utf-8")
    assert httpx.head(url).status_code == 204
    as_json = httpx.get(url, headers={"Accept": "application/json"})
    assert as_json.json() == {"detailed": False, "reasons": ["OK"]}
    assert "<TD>OK</TD>" in httpx.get(url, headers={"Accept": "text/html"}).text
    assert httpx.get(url, headers={"Accept": "text/html;q=0.5, application/json"}).json()["reasons"] == ["OK"]
    assert httpx.get(proc.url + "/healthcheck/ready").status_code == 200

    flag.touch()
    off = httpx.get(url)
    assert (off.status_code, off.text) == (503, "DISABLED BY FILE")
    assert httpx.head(url).status_code == 503
    assert httpx.get(url, headers={"Accept": "application/json"}).json()["reasons"] == ["DISABLED BY FILE"]
    ready = httpx.get(proc.url + "/healthcheck/ready")
    assert ready.status_code == 503 and str(flag) in ready.json()["checks"]["healthcheck"]
    with httpx.Client(base_url=proc.url, headers={"X-Auth-Token": proc.admin_token}) as api:
        assert api.get("/v2/images").status_code == 200  # still serving: only the balancer is told

    flag.unlink()
    assert httpx.get(url).status_code == 200


def test_ready_when_registry_and_store_work(server: ServerProcess) -> None:
    r = httpx.get(server.url + "/healthcheck/ready")
    assert r.status_code == 200
    assert r.json() == {"ready": True, "checks": {"registry": "ok", "store": "ok"}}


def test_not_ready_while_the_store_is_unusable(server_factory: Callable[..., ServerProcess]) -> None:
    gone = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = server_factory(config={
        "store": "s3://images/ready",
        "s3": {"endpoint": gone, "region": "us-east-1", "path_style": True, "allow_http": True,
               "access_key": "k", "secret_key": "not-in-any-answer", "retries": 0, "timeout": 2},
    })
    assert httpx.get(proc.url + "/healthcheck").status_code == 200  # alive ...
    r = httpx.get(proc.url + "/healthcheck/ready", timeout=30)  # ... but not ready
    assert r.status_code == 503, r.text
    doc = r.json()
    assert doc["ready"] is False and doc["checks"]["registry"] == "ok"
    assert doc["checks"]["store"].startswith("store s3://images/ready") and gone in doc["checks"]["store"]
    assert "not-in-any-answer" not in json.dumps(doc)
