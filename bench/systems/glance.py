"""The real Glance 33 as an anchor: its own venv, uWSGI, sqlite, file store, image cache.

Glance's pins must not meet ours, so it lives in ``~/.cache/imgproxy-bench/glance-venv``
(installed once by ``python -m bench setup-glance``, ~80 s, uWSGI builds from source).
No Keystone by default: the ``cachemanagement`` paste flavor runs unauthenticated, and a policy
file with ``"context_is_admin": ""`` lets that context write (``keystone=`` puts
keystonemiddleware in front instead, with Glance's default policies). An ``http`` store is
enabled so images can point at the slow upstream through the locations API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import httpx

from ..servers.venvs import bench_venv, install_venv, venv_installed
from .base import SystemUnavailable, free_port
from .imageapi import ImageApiSystem
from .procs import stop_tree

__all__ = ["GlanceSystem", "glance_venv", "setup_glance", "GLANCE_VERSION", "UWSGI_VERSION"]

GLANCE_VERSION = "33.0.0"
UWSGI_VERSION = "2.0.31"
_PACKAGES = (f"glance=={GLANCE_VERSION}", f"uWSGI=={UWSGI_VERSION}")


def glance_venv() -> Path:
    """Where the Glance venv lives (``IMGPROXY_BENCH_GLANCE_VENV`` overrides)."""
    return bench_venv("glance")


def venv_ready(venv: Path | None = None) -> bool:
    return venv_installed(venv or glance_venv(), _PACKAGES, "uwsgi")


def setup_glance(venv: Path | None = None, *, log: IO[str] = sys.stderr) -> Path:
    """Create the venv and install pinned Glance + uWSGI; a no-op when already done."""
    return install_venv(venv or glance_venv(), _PACKAGES, "uwsgi", about="~80 s, uWSGI builds from source", log=log)


def _paste_ini(venv: Path) -> Path:
    for candidate in (venv / "etc" / "glance" / "glance-api-paste.ini",):
        if candidate.exists():
            return candidate
    found = list(venv.rglob("glance-api-paste.ini"))
    if not found:
        raise SystemUnavailable("glance-api-paste.ini not found in the Glance venv")
    return found[0]


_CONF = """\
[DEFAULT]
enabled_backends = fs:file, web:http
image_cache_dir = {root}/image-cache
image_cache_driver = centralized_db
image_cache_max_size = {cache_max}
worker_self_reference_url = http://127.0.0.1:{port}
show_multiple_locations = true
show_image_direct_url = true
# Digests come with the location (validation_data); re-reading the image to hash it
# would add a full upstream read to every cold image.
do_secure_hash = false
log_file = {root}/glance-api.log
debug = false

[import_filtering_opts]
# The slow upstream is on loopback, which Glance refuses unless the host is allowed.
allowed_hosts = [127.0.0.1]
allowed_ports = []

[database]
connection = sqlite:///{root}/glance.sqlite

[glance_store]
default_backend = fs

[fs]
filesystem_store_datadir = {root}/images

[web]

[os_glance_staging_store]
filesystem_store_datadir = {root}/staging

[os_glance_tasks_store]
filesystem_store_datadir = {root}/tasks

[paste_deploy]
flavor = {flavor}
config_file = {root}/glance-api-paste.ini

[oslo_concurrency]
lock_path = {root}/locks

[oslo_policy]
{policy}
"""

# No Keystone: a policy file lets the unauthenticated context through (see _configure).
_NOAUTH_POLICY = """\
policy_file = {root}/policy.json
enforce_new_defaults = false
enforce_scope = false
"""

# With Keystone: Glance's own defaults (secure RBAC), and keystonemiddleware in front.
_KEYSTONE_POLICY = """\
[keystone_authtoken]
www_authenticate_uri = {url}
auth_url = {url}
auth_type = password
username = {user}
password = {password}
project_name = {project}
user_domain_name = Default
project_domain_name = Default
"""

_UWSGI = """\
[uwsgi]
http-socket = 127.0.0.1:{port}
module = glance.wsgi.api:application
virtualenv = {venv}
env = OS_GLANCE_CONFIG_DIR={root}
processes = {processes}
threads = 1
master = true
lazy-apps = true
enable-threads = true
http-auto-chunked = true
http-chunked-input = true
http-raw-body = true
chunked-input-limit = 16777216
buffer-size = 65535
socket-timeout = 10
add-header = Connection: close
die-on-term = true
pidfile = {root}/uwsgi.pid
logto = {root}/uwsgi.log
"""


class GlanceSystem(ImageApiSystem):
    """Glance 33 under uWSGI on ``127.0.0.1:port``; stopped by SIGTERM to the master PID."""

    kind = "glance"

    def __init__(self, root: Path, *, processes: int = 4, cache_max_size: int = 64 << 30, name: str = "glance",
                 project: str | None = None, keystone: Mapping[str, str] | None = None) -> None:
        """``keystone``: ``url``, ``user``, ``password``, ``project`` of a service user that
        validates tokens (keystonemiddleware, Glance's default policies); ``project``: trust the
        identity headers Keystone's middleware would set (bench only); neither runs without auth."""
        super().__init__(name)
        self.keystone = dict(keystone) if keystone else None
        self.root = Path(root).resolve()
        self.processes = processes
        self.cache_max_size = cache_max_size
        self.venv = glance_venv()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.headers = {"X-Auth-Token": "noauth"}
        # With a project, requests carry the headers Keystone's middleware would set (Glance's
        # ``context`` filter trusts them): images and tasks get that owner, which Glance's import
        # needs (its tasks table refuses a null owner, so the unauthenticated flavor cannot import).
        self.project = project
        if project is not None:
            self.headers = {"X-Auth-Token": "trusted", "X-Identity-Status": "Confirmed", "X-Project-Id": project,
                            "X-User-Id": "bench", "X-Roles": "admin,member,reader"}

    def _configure(self) -> Path:
        root = self.root
        for sub in ("image-cache", "images", "staging", "tasks", "locks"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        conf = root / "glance-api.conf"
        if self.keystone is not None:
            flavor, policy = "keystone+cachemanagement", _KEYSTONE_POLICY.format(**self.keystone)
        else:
            flavor = "cachemanagement" if self.project is None else "trusted+cachemanagement"
            policy = _NOAUTH_POLICY.format(root=root)
        conf.write_text(_CONF.format(root=root, port=self.port, cache_max=self.cache_max_size, flavor=flavor,
                                     policy=policy))
        paste = _paste_ini(self.venv).read_text()
        # The trusted flavor: Keystone's context filter without its token check (bench only).
        trusted = ("trusted+cachemanagement = cors http_proxy_to_wsgi versionnegotiation osprofiler context cache "
                   "cachemanage rootapp\n")
        paste = paste.replace("keystone+cachemanagement = ", trusted + "keystone+cachemanagement = ", 1)
        paste += ("\n[composite:glance-api-trusted+cachemanagement]\npaste.composite_factory = "
                  "glance.api:root_app_factory\n/: api\n/healthcheck: healthcheck\n")
        (root / "glance-api-paste.ini").write_text(paste)
        if self.keystone is None:
            # No Keystone: the unauthenticated context must pass every rule the harness uses,
            # including the location rules that default to the service role.
            rules = {"context_is_admin": "", "default": ""}
            rules.update({f"{op}_image_location": "" for op in ("add", "get", "set", "delete", "fetch")})
            (root / "policy.json").write_text(json.dumps(rules))
        ini = root / "uwsgi.ini"
        ini.write_text(_UWSGI.format(port=self.port, venv=self.venv, root=root, processes=self.processes))
        return conf

    def start(self, timeout: float = 120.0) -> "GlanceSystem":
        if not venv_ready(self.venv):
            raise SystemUnavailable("Glance venv not installed; run `python -m bench setup-glance`")
        conf = self._configure()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
        sync = subprocess.run(
            [str(self.venv / "bin" / "glance-manage"), "--config-file", str(conf), "db_sync"],
            capture_output=True, env=env, cwd=self.root,
        )
        if sync.returncode != 0:
            raise SystemUnavailable(f"glance-manage db_sync failed: {sync.stderr.decode(errors='replace')[-500:]}")
        out = (self.root / "uwsgi-stdout.log").open("ab")
        self.proc = subprocess.Popen(
            [str(self.venv / "bin" / "uwsgi"), "--ini", str(self.root / "uwsgi.ini")],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.root,
        )
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemUnavailable(f"uWSGI exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(self.url + "/healthcheck", timeout=2).status_code == 200:
                    self.pid = self.proc.pid
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.stop()
        raise SystemUnavailable(f"Glance did not answer /healthcheck within {timeout}s: {self.log_tail()}")

    def log_tail(self) -> str:
        out = []
        for name in ("uwsgi.log", "uwsgi-stdout.log", "glance-api.log"):
            try:
                out.append((self.root / name).read_text(errors="replace")[-1500:])
            except OSError:
                pass
        return "\n".join(out)

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_tree(self.proc)
        self.proc = None
        self.pid = None

    def warm(self, image_id: str) -> None:
        """Glance caches on the first full GET; read once so later reads hit its cache."""
        super().warm(image_id)
        # The cache entry is committed after the response ends; give the worker a moment.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = httpx.get(self.url + "/v2/cache", headers=self.headers, timeout=10)
            if r.status_code != 200 or any(c.get("image_id") == image_id for c in r.json().get("cached_images", [])):
                return
            time.sleep(0.1)
