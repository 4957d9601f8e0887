"""A real Keystone on loopback: PyPI ``keystone`` in its own venv, sqlite, fernet tokens.

Installed once by ``python -m bench setup-keystone`` into ``~/.cache/imgproxy-bench/keystone-venv``
(~60 s, all wheels), with waitress, a pure-Python WSGI server that runs Keystone's WSGI app
(``keystone.wsgi.api:application``) in one process, so stopping it by PID stops it all. :class:`KeystoneServer` writes a ``keystone.conf`` under its root, creates the
database and the fernet keys, bootstraps (``keystone-manage bootstrap``: the ``admin`` user,
project and role, the implied roles admin -> member -> reader, the identity endpoint) and
serves on ``127.0.0.1``.

:meth:`KeystoneServer.sibling` starts a second server on the same database and keys with a
different ``[token] expiration``: tokens it issues validate on the first one, which is how
a test gets a token that expires in seconds while every other token lives an hour.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import httpx

from .process import free_port, stop_process
from .venvs import bench_venv, install_venv, venv_installed

__all__ = ["KeystoneServer", "KeystoneUnavailable", "setup_keystone", "keystone_venv", "keystone_venv_ready",
           "KEYSTONE_VERSION"]

KEYSTONE_VERSION = "30.0.0"
_PACKAGES = (f"keystone=={KEYSTONE_VERSION}", "waitress==3.0.2")


class KeystoneUnavailable(RuntimeError):
    """Keystone cannot run here (venv missing) or did not start; the message says why."""


def keystone_venv() -> Path:
    return bench_venv("keystone")


def keystone_venv_ready(venv: Path | None = None) -> bool:
    return venv_installed(venv or keystone_venv(), _PACKAGES, "keystone-manage")


def setup_keystone(venv: Path | None = None, *, log: IO[str] = sys.stderr) -> Path:
    """Create the venv and install pinned Keystone + waitress; a no-op when already done."""
    return install_venv(venv or keystone_venv(), _PACKAGES, "keystone-manage", about="~60 s", log=log)


_CONF = """\
[DEFAULT]
log_file = {root}/keystone.log
debug = false

[database]
connection = sqlite:///{root}/keystone.db

[token]
provider = fernet
expiration = {expiration}

[fernet_tokens]
key_repository = {root}/fernet-keys

[fernet_receipts]
key_repository = {root}/fernet-receipts

[credential]
key_repository = {root}/credential-keys

[identity]
# bcrypt's cheapest cost: every login hashes the password, and tests log in often.
password_hash_rounds = 4

[cache]
# Role, assignment and catalog lookups from memory: each request costs a fraction as much.
enabled = true
backend = dogpile.cache.memory
"""


# Keystone's configuration reads the process's arguments: the app is imported with none.
# One request at a time: sqlite answers concurrent writers "database is locked" (a 500 from
# Keystone), and two logins at once are two writers.
_SERVE = """\
import sys
listen = sys.argv[1]
sys.argv = ["keystone"]
from waitress import serve
from keystone.wsgi.api import application
serve(application, listen=listen, threads=1, ident="keystone")
"""


def _write_keys(repository: Path) -> None:
    """A key repository as ``keystone-manage fernet_setup`` leaves it (key 0 staged, 1 primary),
    written here: each keystone-manage run costs seconds of imports."""
    repository.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in ("0", "1"):
        path = repository / name
        path.write_bytes(base64.urlsafe_b64encode(os.urandom(32)))
        path.chmod(0o600)


class KeystoneServer:
    """One Keystone under ``root`` (see the module doc); ``stop()`` stops it by PID.

    ``admin_password`` is the bootstrap admin's (project ``admin``, domain ``Default``).
    Not thread-safe: one owner starts and stops it.
    """

    admin_password = "admin-secret"
    region = "RegionOne"

    def __init__(self, root: Path, *, venv: Path | None = None, token_expiration: int = 3600,
                 database_of: "KeystoneServer | None" = None) -> None:
        self.root = Path(root).resolve()
        self.venv = venv or keystone_venv()
        self.token_expiration = token_expiration
        self.database_of = database_of  # a sibling shares its database and keys
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._admin_token: str | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "PYTHON", "VIRTUAL_ENV"))}
        env["OS_KEYSTONE_CONFIG_DIR"] = str(self.root)
        return env

    def _manage(self, *args: str) -> None:
        done = subprocess.run([str(self.venv / "bin" / "keystone-manage"), "--config-file",
                               str(self.root / "keystone.conf"), *args],
                              capture_output=True, env=self._env(), cwd=self.root)
        if done.returncode != 0:
            raise KeystoneUnavailable(f"keystone-manage {args[0]} failed:\n{done.stderr.decode(errors='replace')[-3000:]}")

    def _write_conf(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = (self.database_of or self).root
        (self.root / "keystone.conf").write_text(_CONF.format(root=data, expiration=self.token_expiration))

    def _bootstrap(self) -> None:
        for name in ("fernet-keys", "fernet-receipts", "credential-keys"):
            _write_keys(self.root / name)
        self._manage("db_sync")
        self._manage("bootstrap", "--bootstrap-password", self.admin_password,
                     "--bootstrap-admin-url", f"{self.url}/v3/", "--bootstrap-public-url", f"{self.url}/v3/",
                     "--bootstrap-internal-url", f"{self.url}/v3/", "--bootstrap-region-id", self.region)

    def start(self, timeout: float = 120.0) -> "KeystoneServer":
        if not keystone_venv_ready(self.venv):
            raise KeystoneUnavailable(f"the Keystone venv is not installed at {self.venv} "
                                      "(run: python -m bench setup-keystone)")
        self._write_conf()
        if self.database_of is None:
            self._bootstrap()
        with (self.root / "waitress.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [str(self.venv / "bin" / "python"), "-c", _SERVE, f"127.0.0.1:{self.port}"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env(), cwd=self.root)
        try:
            self._wait_ready(time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, deadline: float) -> None:
        assert self.proc is not None
        last = "nothing answered yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise KeystoneUnavailable(f"Keystone exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                answer = httpx.get(self.url + "/v3", timeout=5)
                if answer.status_code == 200:
                    return
                last = f"GET /v3: {answer.status_code}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
        raise KeystoneUnavailable(f"Keystone did not become ready ({last}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for name in ("waitress.log", "keystone.log"):
            try:
                out += (self.root / name).read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                pass
        return "\n".join(out)

    def sibling(self, root: Path, *, token_expiration: int) -> "KeystoneServer":
        """A second server (not started) on this one's database and keys."""
        return KeystoneServer(root, venv=self.venv, token_expiration=token_expiration, database_of=self)

    def stop(self) -> None:
        """SIGTERM by PID (SIGKILL if it lingers); waits until it is gone."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, timeout=10)

    def __enter__(self) -> "KeystoneServer":
        return self if self.proc else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what clients need ------------------------------------------------------------

    def token(self, user: str, password: str, project: str | None = None, *, domain: str = "Default") -> str:
        """A token of ``user``, scoped to ``project`` (unscoped when None)."""
        auth: dict[str, Any] = {"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": domain}, "password": password}}}}
        if project is not None:
            auth["scope"] = {"project": {"name": project, "domain": {"name": domain}}}
        answer = httpx.post(self.url + "/v3/auth/tokens", json={"auth": auth}, timeout=30)
        if answer.status_code != 201:
            raise KeystoneUnavailable(f"login of {user} failed: {answer.status_code} {answer.text[:300]}")
        return answer.headers["x-subject-token"]

    def admin_token(self) -> str:
        if self._admin_token is None:
            self._admin_token = self.token("admin", self.admin_password, "admin")
        return self._admin_token

    def admin_call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """``method /v3<path>`` as the admin; the JSON answer (``{}`` when empty)."""
        answer = httpx.request(method, self.url + "/v3" + path, json=body, timeout=30,
                               headers={"X-Auth-Token": self.admin_token()})
        if answer.status_code >= 400:
            raise KeystoneUnavailable(f"{method} {path}: {answer.status_code} {answer.text[:300]}")
        return answer.json() if answer.content else {}

    def ensure_project(self, name: str) -> str:
        """The id of project ``name`` in the Default domain, created if missing."""
        found = self.admin_call("GET", f"/projects?name={name}")["projects"]
        if found:
            return str(found[0]["id"])
        return str(self.admin_call("POST", "/projects", {"project": {"name": name, "domain_id": "default"}})["project"]["id"])

    def ensure_role(self, name: str) -> str:
        found = self.admin_call("GET", f"/roles?name={name}")["roles"]
        if found:
            return str(found[0]["id"])
        return str(self.admin_call("POST", "/roles", {"role": {"name": name}})["role"]["id"])

    def create_user(self, name: str, password: str, project: str, roles: list[str]) -> str:
        """A user with ``roles`` on ``project`` (created if missing); returns the user's id."""
        project_id = self.ensure_project(project)
        user = self.admin_call("POST", "/users", {"user": {"name": name, "password": password,
                                                       "domain_id": "default"}})["user"]
        for role in roles:
            self.admin_call("PUT", f"/projects/{project_id}/users/{user['id']}/roles/{self.ensure_role(role)}")
        return str(user["id"])

    def expires_at(self, token: str) -> float:
        """When ``token`` expires (seconds since the epoch), expired or not."""
        answer = httpx.get(self.url + "/v3/auth/tokens?allow_expired=1", timeout=30,
                           headers={"X-Auth-Token": self.admin_token(), "X-Subject-Token": token})
        answer.raise_for_status()
        return datetime.fromisoformat(answer.json()["token"]["expires_at"]).timestamp()

    def revoke(self, token: str) -> None:
        """Revoke ``token`` (``DELETE /v3/auth/tokens``)."""
        answer = httpx.delete(self.url + "/v3/auth/tokens", timeout=30,
                              headers={"X-Auth-Token": self.admin_token(), "X-Subject-Token": token})
        if answer.status_code != 204:
            raise KeystoneUnavailable(f"revoking a token: {answer.status_code} {answer.text[:300]}")
