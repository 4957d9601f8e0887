"""The ``imgproxy`` command as a user runs it: serve (admin token, clean stop, bad settings),
``token create`` / ``token list``, and the ``cache`` group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.server import ServerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("IMGPROXY_")}
    base["PYTHONPATH"] = str(ROOT) + os.pathsep + base.get("PYTHONPATH", "")
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "imgproxy", *args],
        capture_output=True,
        text=True,
        env=base,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_first_start_prints_admin_token_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ServerProcess(data) as first:
        token = first.admin_token
        assert token in first.log()
        r = httpx.get(first.url + "/v2/images", headers={"X-Auth-Token": token})
        assert r.status_code == 200
    with ServerProcess(data) as second:
        assert second.admin_token == token
        assert token not in second.log()
        assert "admin token" not in second.log()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stops_cleanly_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    proc = ServerProcess(tmp_path / "data").start()
    try:
        assert proc.proc is not None
        proc.proc.send_signal(sig)
        assert proc.proc.wait(20) == 0, proc.log()
    finally:
        proc.stop()
    assert port_is_free(proc.port)


def test_stops_cleanly_with_two_workers(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path / "data", workers=2).start()
    try:
        assert httpx.get(proc.url + "/v2/images", headers={"X-Auth-Token": proc.admin_token}).status_code == 200
    finally:
        code = proc.stop()
    assert code == 0, proc.log()
    assert port_is_free(proc.port)


@pytest.mark.parametrize(
    ("args", "env", "key"),
    [
        (["--port", "0"], {}, "port"),
        (["--workers", "0"], {}, "workers"),
        ([], {"IMGPROXY_CHUNK_SIZE": "12"}, "chunk_size"),
        ([], {"IMGPROXY_AUTH": "maybe"}, "auth"),
        ([], {"IMGPROXY_LOG_LEVEL": "loud"}, "log_level"),
        ([], {"IMGPROXY_DEFAULT_STORE": "fast"}, "default_store"),
        ([], {"IMGPROXY_STORES_FAST_SECRET_KEY": "x"}, "IMGPROXY_STORES_FAST_SECRET_KEY"),
    ],
)
def test_bad_setting_stops_start_up(tmp_path: Path, args: list[str], env: dict[str, str], key: str) -> None:
    r = run_cli("serve", "--data-dir", str(tmp_path / "data"), *(args or ["--port", str(free_port())]), env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"'{key}'" in r.stderr


def test_bad_config_file_stops_start_up(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[imgproxy]\ncache_high_watermark = 2\n")
    r = run_cli("serve", "--data-dir", str(tmp_path / "d"), "--config", str(config), "--port", str(free_port()))
    assert r.returncode == 2 and "'cache_high_watermark'" in r.stderr
    r = run_cli("serve", "--data-dir", str(tmp_path / "d"), "--config", str(tmp_path / "absent.toml"))
    assert r.returncode == 2 and "'config'" in r.stderr


def test_settings_precedence_over_the_cli(tmp_path: Path) -> None:
    """The config file names a port, the environment another, the flag wins; the server answers there."""
    flag_port = free_port()
    config = tmp_path / "c.toml"
    config.write_text(f"port = {free_port()}\nlog_level = \"warning\"\n")
    proc = ServerProcess(
        tmp_path / "data", extra_args=["--config", str(config)], env={"IMGPROXY_PORT": str(free_port())}
    )
    proc.port, proc.url = flag_port, f"http://127.0.0.1:{flag_port}"
    with proc:
        assert httpx.get(proc.url + "/versions").status_code == 200


def test_token_create_and_list(tmp_path: Path) -> None:
    data = tmp_path / "data"
    r = run_cli("token", "create", "--data-dir", str(data), "--project", "proj-a", "--role", "member", "--role", "reader")
    assert r.returncode == 0, r.stderr
    token = r.stdout.split()[-1]
    assert len(token) == 48
    r = run_cli("token", "list", "--data-dir", str(data))
    assert r.returncode == 0
    assert token not in r.stdout  # only prefixes are shown
    line = next(line for line in r.stdout.splitlines() if line.startswith(token[:8]))
    assert "proj-a" in line and "member,reader" in line


def test_token_create_defaults_to_member_and_refuses_bad_role(tmp_path: Path) -> None:
    data = tmp_path / "data"
    r = run_cli("token", "create", "--data-dir", str(data), "--project", "p")
    assert r.returncode == 0 and "member" in r.stdout
    r = run_cli("token", "create", "--data-dir", str(data), "--project", "p", "--role", "owner")
    assert r.returncode == 2 and "owner" in r.stderr


def test_token_created_while_serving_works_without_restart(server_factory: Callable[..., ServerProcess]) -> None:
    proc = server_factory()
    r = run_cli("token", "create", "--data-dir", str(proc.data_dir), "--project", "late-comer")
    token = r.stdout.split()[-1]
    client = httpx.Client(base_url=proc.url, headers={"X-Auth-Token": token}, timeout=10)
    with client:
        status = 0
        for _ in range(60):  # the server looks at the file at most every ~0.5 s
            status = client.get("/v2/images").status_code
            if status == 200:
                break
            time.sleep(0.05)
        assert status == 200


def test_noauth_serves_without_token(server_factory: Callable[..., ServerProcess]) -> None:
    proc = server_factory(noauth=True)
    assert httpx.get(proc.url + "/v2/images").status_code == 200
    assert not (proc.data_dir / "tokens.json").exists()


def test_cache_group_exists() -> None:
    r = run_cli("cache", "--help")
    assert r.returncode == 0
    for action in ("prune", "clean", "prefetch"):
        assert action in r.stdout
