"""OpenStack Swift all-in-one on loopback: its Swift API (tempauth) and its S3 API.

Swift's pins (eventlet, lxml, ...) must not meet ours, so it lives in its own venv,
``~/.cache/imgproxy-bench/swift-venv`` (installed once by ``python -m bench setup-swift``,
~40 s, all wheels). :class:`SwiftServer` runs a proxy, an account, a container and an
object server from that venv as our own processes: no /etc/swift, no XFS, no root
daemons (../shared/anchors/upstreams.md has the facts this follows):

* every conf sets ``swift_dir`` to our own etc dir, and ``SWIFT_CONF_FILE`` (read by Swift
  at import) points at our ``swift.conf``;
* one device in a plain directory, ``mount_check = false``, ``workers = 0`` (each server is
  one process) but for the proxy and object servers when ``workers`` is set (their workers
  are their children, stopped with them), 1-replica rings built with one Python
  call to ``RingBuilder`` (nine ``swift-ring-builder`` calls take ~7 s);
* ports below 32768, outside the kernel's ephemeral range, so an outgoing connection of one
  server never takes the port another is about to bind;
* no /dev/log here: servers run with ``-v`` and their output goes to ``logs/<name>.log``.
"""

from __future__ import annotations

import getpass
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from ..systems.procs import live_tree, stop_tree
from .venvs import bench_venv, install_venv, venv_installed

__all__ = ["SwiftServer", "SwiftUnavailable", "S3Details", "setup_swift", "swift_venv", "swift_venv_ready", "SWIFT_VERSION"]

SWIFT_VERSION = "2.38.3"
_PACKAGES = (f"swift=={SWIFT_VERSION}", "python-swiftclient", "boto3")
_SERVERS = ("account", "container", "object", "proxy")


class SwiftUnavailable(RuntimeError):
    """Swift cannot run here (venv missing) or did not start; the message says why."""


def swift_venv() -> Path:
    """Where the Swift venv lives (``IMGPROXY_BENCH_SWIFT_VENV`` overrides)."""
    return bench_venv("swift")


def swift_venv_ready(venv: Path | None = None) -> bool:
    return venv_installed(venv or swift_venv(), _PACKAGES, "swift-proxy-server")


def setup_swift(venv: Path | None = None, *, log: IO[str] = sys.stderr) -> Path:
    """Create the venv and install pinned Swift + its clients; a no-op when already done."""
    return install_venv(venv or swift_venv(), _PACKAGES, "swift-proxy-server", about="~40 s", log=log)


def free_low_port(taken: set[int] = frozenset()) -> int:  # type: ignore[assignment]
    """A free loopback port in 20000..32767, below the kernel's ephemeral range (see module doc)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32768)
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SwiftUnavailable("no free loopback port below 32768")


_SWIFT_CONF = """\
[swift-hash]
swift_hash_path_prefix = imgproxy-test-prefix
swift_hash_path_suffix = imgproxy-test-suffix

[storage-policy:0]
name = gold
default = yes
"""

# What every server's [DEFAULT] holds.
_DEFAULT = """\
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
bind_timeout = 5
workers = {workers}
user = {user}
swift_dir = {etc}
devices = {devices}
mount_check = false
log_name = {name}-server
log_level = {log_level}
"""

_BACKEND_APP = """\
disk_chunk_size = 1048576
network_chunk_size = 1048576

[pipeline:main]
pipeline = {name}-server

[app:{name}-server]
use = egg:swift#{name}
"""

# s3api before the auth, slo after it (or multipart uploads are off): upstreams.md.
_PROXY_APP = """\
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl s3api tempauth copy slo dlo versioned_writes symlink proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
object_chunk_size = 1048576
client_chunk_size = 1048576

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = {key} .admin
token_life = {token_life}
# Self-contained (Fernet) tokens: no memcached needed to remember them.
fernet_key_k1 = {fernet_key}
active_fernet_key_id = k1

[filter:s3api]
use = egg:swift#s3api
location = {region}
# Tests use small parts; real S3 insists on 5 MiB.
min_segment_size = 1

[filter:cache]
use = egg:swift#memcache
{memcache_servers}

{plain_filters}
"""

# Filters of the pipeline that take no options: "[filter:NAME]" using egg:swift#NAME.
_PLAIN_FILTERS = ("catch_errors", "gatekeeper", "healthcheck", "listing_formats", "bulk", "tempurl",
                  "copy", "slo", "dlo", "versioned_writes", "symlink")


def _plain_filters() -> str:
    sections = [f"[filter:{name}]\nuse = egg:swift#{name}\n" for name in _PLAIN_FILTERS]
    # The pipeline spells it with a dash, the egg with an underscore.
    return "".join(sections) + "[filter:proxy-logging]\nuse = egg:swift#proxy_logging\n"


# One Python call in the Swift venv builds the three 1-replica rings.
_RINGS = """\
import sys
from swift.common.ring import RingBuilder
etc = sys.argv[1]
for kind, port in zip(("account", "container", "object"), map(int, sys.argv[2:5])):
    builder = RingBuilder(6, 1, 1)
    builder.add_dev({"id": 0, "region": 1, "zone": 1, "ip": "127.0.0.1", "port": port,
                     "device": "d1", "weight": 100.0})
    builder.rebalance()
    builder.save(f"{etc}/{kind}.builder")
    builder.get_ring().save(f"{etc}/{kind}.ring.gz")
"""


@dataclass(frozen=True)
class S3Details:
    """How to reach the same Swift through its S3 API (SigV4; buckets in the path)."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    path_style: bool = True


class SwiftServer:
    """A Swift all-in-one under ``root``: proxy + account + container + object servers.

    ``start()`` writes the confs and rings, starts the four servers and returns once an
    authenticated request through the proxy succeeds; ``stop()`` stops them by PID, with
    their children. ``token_life`` (seconds) bounds tempauth tokens. ``workers``: the proxy's and
    the object server's; 0 (the tests' default), each is one process; production Swift runs
    one per core (``workers = auto``), so parallel requests do not queue behind one core.
    Not thread-safe: one owner starts and stops it.
    """

    user = "test:tester"
    key = "testing"
    region = "us-east-1"

    def __init__(self, root: Path, *, venv: Path | None = None, token_life: int = 86400,
                 log_level: str = "INFO", memcached: bool = False, workers: int = 0) -> None:
        self.root = Path(root).resolve()
        self.venv = venv or swift_venv()
        self.token_life = token_life
        self.log_level = log_level
        # A memcached beside the proxy, as every production Swift has: without one, each GET
        # also asks the account and container servers (a ranged read pays that per range).
        self.memcached = memcached
        self.workers = workers
        self.etc = self.root / "etc"
        self.devices = self.root / "devices"
        self.logs = self.root / "logs"
        self.ports: dict[str, int] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.url = ""
        self.start_seconds = 0.0

    # -- what clients need ------------------------------------------------------------

    @property
    def auth_url(self) -> str:
        """tempauth v1.0: ``GET`` with ``X-Auth-User``/``X-Auth-Key``."""
        return f"{self.url}/auth/v1.0"

    @property
    def storage_url(self) -> str:
        return f"{self.url}/v1/AUTH_test"

    @property
    def s3(self) -> S3Details:
        return S3Details(self.url, self.user, self.key, self.region)

    @property
    def s3_endpoint(self) -> str:
        return self.url

    def token(self) -> str:
        """A fresh tempauth token for ``test:tester``."""
        response = httpx.get(self.auth_url, headers={"X-Auth-User": self.user, "X-Auth-Key": self.key}, timeout=10)
        response.raise_for_status()
        return response.headers["x-auth-token"]

    # -- lifecycle ----------------------------------------------------------------------

    def _write_confs(self) -> None:
        import base64

        for path in (self.etc, self.devices / "d1", self.logs, self.root / "run"):
            path.mkdir(parents=True, exist_ok=True)
        (self.etc / "swift.conf").write_text(_SWIFT_CONF)
        taken: set[int] = set()
        for name in (*_SERVERS, "memcached"):
            self.ports[name] = free_low_port(taken)
            taken.add(self.ports[name])
        common = {"user": getpass.getuser(), "etc": self.etc, "devices": self.devices, "log_level": self.log_level}
        for name in ("account", "container", "object"):
            workers = self.workers if name == "object" else 0
            text = _DEFAULT.format(port=self.ports[name], name=name, workers=workers, **common) + _BACKEND_APP.format(name=name)
            (self.etc / f"{name}-server.conf").write_text(text)
        fernet_key = base64.urlsafe_b64encode(os.urandom(32)).decode()
        (self.etc / "proxy-server.conf").write_text(
            _DEFAULT.format(port=self.ports["proxy"], name="proxy", workers=self.workers, **common)
            + _PROXY_APP.format(key=self.key, token_life=self.token_life, fernet_key=fernet_key, region=self.region,
                               plain_filters=_plain_filters(),
                               memcache_servers=f"memcache_servers = 127.0.0.1:{self.ports['memcached']}"
                               if self.memcached else "")
        )
        ports = [str(self.ports[n]) for n in ("account", "container", "object")]
        built = subprocess.run([str(self.venv / "bin" / "python"), "-c", _RINGS, str(self.etc), *ports],
                               capture_output=True, text=True)
        if built.returncode != 0:
            raise SwiftUnavailable(f"building the Swift rings failed: {built.stderr[-2000:]}")

    def start(self, timeout: float = 60.0) -> "SwiftServer":
        if not swift_venv_ready(self.venv):
            raise SwiftUnavailable(f"the Swift venv is not installed at {self.venv} (run: python -m bench setup-swift)")
        t0 = time.monotonic()
        self._write_confs()
        self.url = f"http://127.0.0.1:{self.ports['proxy']}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "SWIFT_", "PYTHON"))}
        try:
            if self.memcached:
                self._start_memcached()
            for name in _SERVERS:
                with (self.logs / f"{name}.log").open("ab") as out:
                    proc = subprocess.Popen(
                        [str(self.venv / "bin" / f"swift-{name}-server"), str(self.etc / f"{name}-server.conf"), "-v"],
                        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                    )
                self.procs[name] = proc
                (self.root / "run" / f"{name}.pid").write_text(f"{proc.pid}\n")
            self._wait_ready(time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _start_memcached(self) -> None:
        binary = shutil.which("memcached")
        if binary is None:
            raise SwiftUnavailable("memcached is not installed (apt-get install memcached)")
        with (self.logs / "memcached.log").open("ab") as out:
            proc = subprocess.Popen([binary, "-l", "127.0.0.1", "-p", str(self.ports["memcached"]), "-U", "0",
                                     "-m", "64", "-t", "1", "-u", getpass.getuser()], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self.procs["memcached"] = proc
        (self.root / "run" / "memcached.pid").write_text(f"{proc.pid}\n")

    def _wait_ready(self, deadline: float) -> None:
        last = "nothing answered yet"
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SwiftUnavailable(f"swift-{name}-server exited with {proc.returncode}:\n{self.log_tail(name)}")
            try:
                for name in ("account", "container", "object"):
                    socket.create_connection(("127.0.0.1", self.ports[name]), timeout=0.5).close()
                token = self.token()
                # HEAD of the account goes through the proxy to the account server.
                head = httpx.head(self.storage_url, headers={"X-Auth-Token": token}, timeout=5)
                forked = all(len(live_tree(self.procs[name])) > self.workers for name in ("proxy", "object"))
                if head.status_code in (200, 204) and forked:
                    return
                last = f"HEAD account: {head.status_code}"
            except (OSError, httpx.HTTPError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
        raise SwiftUnavailable(f"Swift did not become ready ({last}):\n{self.log_tail('proxy')}")

    def log_tail(self, name: str, lines: int = 40) -> str:
        try:
            return "\n".join((self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM each server by PID (SIGKILL if it lingers); wait until none runs, its workers
        included (SIGKILL for one that outlives its parent), zombies included."""
        procs, self.procs = self.procs, {}
        trees = {name: live_tree(proc) for name, proc in procs.items()}
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in procs.items():
            stop_tree(proc, timeout=10, tree=trees[name])
            (self.root / "run" / f"{name}.pid").unlink(missing_ok=True)

    def all_pids(self) -> list[int]:
        """Every process of the store now: each server and its workers."""
        return [pid for proc in self.procs.values() for pid in live_tree(proc)]

    def __enter__(self) -> "SwiftServer":
        return self if self.procs else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
