"""``python -m bench tempest``: tempest's image API tests against imgproxy and the real Glance.

One real Keystone (:mod:`bench.servers.keystone`) issues every token; imgproxy runs with
``auth = "keystone"`` and Glance 33 with keystonemiddleware and its default policies, both
validating as the same service user. The Keystone catalog holds one ``image`` endpoint per
system, each in a region named after it, so the same ``tempest.conf`` (but ``[image] region``)
drives both. Tempest (PyPI ``tempest``, pinned) lives in its own venv
(``python -m bench setup-tempest``) and runs ``tempest.api.image`` with dynamic credentials
(it creates its own projects and users with the reader, member and admin roles).

What the run writes into ``out``: ``tempest.json`` and ``tempest.md`` (counts per system and
the failing tests), and each system's full tempest output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from .servers.keystone import KeystoneServer
from .servers.venvs import bench_venv, install_venv, venv_installed
from .systems.glance import GlanceSystem, glance_venv
from .systems.imgproxy import ImgproxySystem

__all__ = ["TempestResult", "run_tempest", "setup_tempest", "tempest_venv_ready", "TEMPEST_VERSION"]

TEMPEST_VERSION = "47.0.0"
_PACKAGES = (f"tempest=={TEMPEST_VERSION}",)
IMAGE_TESTS = r"^tempest\.api\.image\."
SERVICE_USER, SERVICE_PASSWORD = "image-service", "image-service-secret"


def tempest_venv_ready() -> bool:
    return venv_installed(bench_venv("tempest"), _PACKAGES, "tempest")


def setup_tempest(*, log: IO[str] = sys.stderr) -> Path:
    """Create the venv and install pinned tempest; a no-op when already done."""
    return install_venv(bench_venv("tempest"), _PACKAGES, "tempest", about="~60 s", log=log)


@dataclass
class TempestResult:
    system: str
    ran: int = 0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    note: str = ""


# Only the image service runs: every other service is off, and nothing needs a network.
_CONF = """\
[DEFAULT]
log_file = {workspace}/tempest.log

[auth]
use_dynamic_credentials = true
admin_username = admin
admin_password = {admin_password}
admin_project_name = admin
admin_domain_name = Default

[identity]
uri_v3 = {keystone}/v3
auth_version = v3
region = {keystone_region}

[identity-feature-enabled]
api_v2 = false

[service_available]
glance = true
nova = false
neutron = false
cinder = false
swift = false

[image]
region = {region}
endpoint_type = public
image_caching_enabled = true

[image-feature-enabled]
api_v2 = true
import_image = false
manage_locations = false
http_store_enabled = false

[enforce_scope]
glance = true

[validation]
run_validation = false
"""

_TOTALS = {name: re.compile(rf"^\s*-\s*{label}:\s*(\d+)", re.M)
           for name, label in (("passed", "Passed"), ("failed", "Failed"), ("skipped", "Skipped"))}
_RAN = re.compile(r"^Ran:\s*(\d+) tests in ([\d.]+) sec", re.M)


def _catalog(keystone: KeystoneServer, endpoints: dict[str, str]) -> None:
    """An ``image`` service with one public endpoint per system, in a region of its name."""
    service = keystone.admin_call("POST", "/services", {"service": {"type": "image", "name": "glance"}})["service"]
    for region, url in endpoints.items():
        keystone.admin_call("POST", "/regions", {"region": {"id": region}})
        keystone.admin_call("POST", "/endpoints", {"endpoint": {"service_id": service["id"], "interface": "public",
                                                                "region_id": region, "url": url}})


def _workspace(workspace: Path, venv: Path) -> None:
    """What ``tempest init`` makes (etc/, the stestr config), without recording the workspace
    in ``~/.tempest``: the run leaves nothing outside its own directories."""
    package = next((venv / "lib").glob("python3*/site-packages/tempest"))
    (workspace / "etc").mkdir(parents=True)
    (workspace / "logs").mkdir()
    (workspace / ".stestr.conf").write_text(
        f"[DEFAULT]\ntest_path={package / 'test_discover'}\ntop_dir={package}\ngroup_regex=([^\\.]*\\.)*\n")


def _load_metadefs(system: ImgproxySystem | GlanceSystem) -> None:
    """The metadata definitions Glance ships (``etc/glance/metadefs``) into ``system``, as
    devstack loads them (``glance-manage db_load_metadefs``): tempest's metadefs tests take
    the first resource type of the catalog and fail on an empty one."""
    source = glance_venv() / "etc" / "glance" / "metadefs"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "IMGPROXY_"))}
    if isinstance(system, GlanceSystem):
        env = {k: v for k, v in env.items() if not k.startswith("PYTHON")}
        args = [str(system.venv / "bin" / "glance-manage"), "--config-file", str(system.root / "glance-api.conf"),
                "db_load_metadefs", str(source)]
        cwd: Path | None = system.root
    else:
        args = [sys.executable, "-m", "imgproxy", "metadefs", "load", str(source), "--data-dir", str(system.data_dir),
                "--config", str(system.root / "imgproxy.toml")]
        cwd = system.source  # as the server runs: another checkout from its own directory
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd)
    if done.returncode != 0:
        raise SystemExit(f"loading metadefs into {system.kind} failed: {(done.stderr or done.stdout)[-500:]}")


def _run_one(system: str, keystone: KeystoneServer, work: Path, out: Path, concurrency: int,
             regex: str) -> TempestResult:
    venv = bench_venv("tempest")
    workspace = work / f"tempest-{system}"
    _workspace(workspace, venv)
    (workspace / "etc" / "tempest.conf").write_text(_CONF.format(
        workspace=workspace, admin_password=keystone.admin_password, keystone=keystone.url,
        keystone_region=keystone.region, region=system))
    t0 = time.monotonic()
    log = out / f"tempest-{system}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(TEMPEST_CONFIG_DIR=str(workspace / "etc"), TEMPEST_CONFIG="tempest.conf")
    with log.open("wb") as f:
        subprocess.run([str(venv / "bin" / "tempest"), "run", "--regex", regex, "--concurrency", str(concurrency)],
                       cwd=workspace, stdout=f, stderr=subprocess.STDOUT, env=env)
    text = log.read_text(errors="replace")
    result = TempestResult(system, seconds=round(time.monotonic() - t0, 1))
    ran = _RAN.search(text)
    if ran is None:
        result.note = f"tempest printed no totals; see {log.name}"
        return result
    result.ran = int(ran.group(1))
    for name, pattern in _TOTALS.items():
        found = pattern.search(text)
        setattr(result, name, int(found.group(1)) if found else 0)
    failing = subprocess.run([str(venv / "bin" / "stestr"), "failing", "--list"], cwd=workspace,
                             capture_output=True, text=True)
    result.failures = sorted({line.split("[")[0] for line in failing.stdout.splitlines() if line.startswith("tempest.")})
    return result


def run_tempest(out: Path, work: Path, *, systems: Sequence[str] = ("imgproxy", "glance"), concurrency: int = 2,
                regex: str = IMAGE_TESTS) -> list[TempestResult]:
    """Start Keystone and the systems under ``work``, run tempest against each, write the report.

    Every server started here is stopped (by PID) before this returns, also on errors.
    """
    if not tempest_venv_ready():
        raise SystemExit("the tempest venv is not installed: run `python -m bench setup-tempest`")
    out.mkdir(parents=True, exist_ok=True)
    keystone = KeystoneServer(work / "keystone")
    started: list[ImgproxySystem | GlanceSystem] = []
    try:
        keystone.start()
        keystone.create_user(SERVICE_USER, SERVICE_PASSWORD, "service", ["service"])
        credentials = {"url": keystone.url, "user": SERVICE_USER, "password": SERVICE_PASSWORD, "project": "service"}
        endpoints = {}
        for name in systems:
            if name == "imgproxy":
                system: ImgproxySystem | GlanceSystem = ImgproxySystem(work / "imgproxy", config={
                    "auth": "keystone", "keystone_url": keystone.url, "keystone_user": SERVICE_USER,
                    "keystone_password": SERVICE_PASSWORD, "keystone_project": "service",
                    "cache_max_size": 1 << 30, "prefetch_interval": 1,
                    # Glance's setup: a file store and, apart from it, the image cache that
                    # ``PUT /v2/cache`` fills. imgproxy's default reads a local file store in
                    # place and never copies it into the cache, so a queued image would never
                    # be listed as cached (tempest's image caching cycle waits for that).
                    "file": {"in_place": False}})
            elif name == "glance":
                # One process, as imgproxy runs: two share Glance's sqlite database, and writes of
                # tempest's parallel workers then fail with "database is locked" (500s).
                system = GlanceSystem(work / "glance", processes=1, cache_max_size=1 << 30, keystone=credentials)
            else:
                raise SystemExit(f"unknown system {name!r}: imgproxy or glance")
            started.append(system.start())
            _load_metadefs(system)
            endpoints[name] = system.url
        _catalog(keystone, endpoints)
        results = [_run_one(name, keystone, work, out, concurrency, regex) for name in systems]
    finally:
        for system in started:
            system.stop()
        keystone.stop()
    (out / "tempest.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    (out / "tempest.md").write_text(_markdown(results, regex))
    return results


def _markdown(results: Sequence[TempestResult], regex: str) -> str:
    lines = [f"# tempest {TEMPEST_VERSION}, `{regex}`, one Keystone", "",
             "| system | ran | passed | failed | skipped | seconds |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.system} | {r.ran} | {r.passed} | {r.failed} | {r.skipped} | {r.seconds} |" for r in results]
    for r in results:
        lines += ["", f"## failing on {r.system} ({len(r.failures)})", ""]
        lines += [f"- `{name}`" for name in r.failures] or ["none"]
        if r.note:
            lines += ["", r.note]
    return "\n".join(lines) + "\n"

