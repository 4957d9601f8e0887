"""The tokens file: which token belongs to which project, with which roles.

The file is JSON, mode 0600, mapping each token to
``{"project": str, "roles": [str, ...], "created_at": "2026-11-27T14:00:00Z"}``.
Writers take an exclusive ``flock`` on ``<file>.lock`` for the whole
read-modify-write, so two ``imgproxy token create`` processes never lose a
token, and replace the file atomically (temp file + fsync + rename), so a
reader never sees half a file. The running service re-reads the file when it
changes, so new tokens work without a restart.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .auth import NO_CHALLENGE
from .context import ROLES, RequestContext

__all__ = [
    "TokensAuth",
    "TokensFileError",
    "create_token",
    "ensure_admin_token",
    "list_tokens",
    "read_admin_token",
    "read_tokens",
]

ADMIN_PROJECT = "admin"
# How often the service looks at the file's stat: cheap enough per burst, and a
# token added by the CLI works within about this long.
RELOAD_INTERVAL = 0.5


class TokensFileError(ValueError):
    """The tokens file, or a value about to be written to it, is invalid."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _check_roles(roles: list[str] | tuple[str, ...]) -> list[str]:
    if not roles:
        raise TokensFileError("a token needs at least one role")
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise TokensFileError(f"unknown role(s) {', '.join(map(repr, unknown))}; roles are {', '.join(ROLES)}")
    return list(dict.fromkeys(roles))  # keep order, drop repeats


def _parse(raw: bytes, path: Path) -> dict[str, dict[str, Any]]:
    """Validate a tokens document; raise :class:`TokensFileError` naming the file."""
    try:
        doc = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise TokensFileError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise TokensFileError(f"{path} must hold a JSON object")
    for token, entry in doc.items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("project"), str)
            or not isinstance(entry.get("roles"), list)
        ):
            raise TokensFileError(f"{path}: entry for token {token[:8]}... needs a project and a roles list")
    return doc


def read_tokens(path: str | Path) -> dict[str, dict[str, Any]]:
    """Return the file's mapping (empty when the file does not exist)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    return _parse(raw, path)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``<path>.lock`` (serializes writers across processes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_atomic(path: Path, doc: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``doc``: temp file in the same dir, mode 0600, fsync, rename, fsync dir."""
    data = (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _add(path: Path, project: str, roles: list[str]) -> str:
    """Add a token; the caller holds the lock."""
    doc = read_tokens(path)
    token = secrets.token_hex(24)
    doc[token] = {"project": project, "roles": roles, "created_at": _now()}
    _write_atomic(path, doc)
    return token


def create_token(path: str | Path, *, project: str, roles: list[str]) -> str:
    """Add a new random token for ``project`` with ``roles`` and return it.

    Raises :class:`TokensFileError` for an empty project or unknown roles.
    Safe to call from several processes at once.
    """
    if not isinstance(project, str) or not project.strip():
        raise TokensFileError("a token needs a project")
    checked = _check_roles(list(roles))
    path = Path(path)
    with _locked(path):
        return _add(path, project.strip(), checked)


def ensure_admin_token(path: str | Path) -> str | None:
    """Create the file with an admin token for project ``admin`` unless it already holds one.

    Returns the new token (to be printed once), or ``None`` when an admin token existed.
    """
    path = Path(path)
    with _locked(path):
        if any("admin" in e["roles"] for e in read_tokens(path).values()):
            return None
        return _add(path, ADMIN_PROJECT, ["admin"])


def read_admin_token(path: str | Path) -> str:
    """The first admin token in the file (for tests and tools); LookupError if none."""
    for token, entry in read_tokens(path).items():
        if "admin" in entry["roles"]:
            return token
    raise LookupError(f"no admin token in {path}")


def list_tokens(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """``(token, entry)`` pairs in creation order."""
    return list(read_tokens(path).items())


class TokensAuth:
    """:class:`imgproxy.auth.Authenticator` backed by a tokens file.

    Looks at the file's (inode, size, mtime) at most every ``RELOAD_INTERVAL``
    seconds and re-reads it when they change; an unknown token checks at once
    (one ``stat``, no re-read unless the file changed), so a token created just
    before a request works on that request. A file that fails to parse keeps
    the previous tokens in force (writers replace it atomically, so that means
    an operator's bad hand edit, not a torn write). Thread-safe: uvicorn runs
    one instance per worker process, but handlers may call it from threads.
    """

    challenge = NO_CHALLENGE

    def __init__(self, path: str | Path, reload_interval: float = RELOAD_INTERVAL) -> None:
        self.path = Path(path)
        self.reload_interval = reload_interval
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")
        self._contexts: dict[str, RequestContext] = {}
        self._maybe_reload(force=True)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _maybe_reload(self, force: bool = False, force_stat: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not (force or force_stat) and now - self._checked_at < self.reload_interval:
                return
            self._checked_at = now
            stamp = self._stat()
            if stamp == self._stamp and not force:
                return
            try:
                doc = read_tokens(self.path)
            except TokensFileError:
                self._stamp = stamp  # keep the last good set; parse again only when the file changes
                return
            except OSError:
                return  # keep the last good set; retried at the next check
            contexts = {}
            for token, entry in doc.items():
                roles = frozenset(r for r in entry["roles"] if r in ROLES)
                if roles:
                    contexts[token] = RequestContext(project_id=entry["project"], roles=roles)
            self._contexts = contexts
            self._stamp = stamp

    def authenticate_now(self, headers: Mapping[str, str]) -> RequestContext | None:
        """A ``stat`` at most, no read unless the file changed: cheap enough for the loop."""
        token = headers.get("x-auth-token")
        if not token:
            return None
        token = token.strip()
        self._maybe_reload()
        ctx = self._contexts.get(token)
        if ctx is None:
            self._maybe_reload(force_stat=True)
            ctx = self._contexts.get(token)
        return ctx

    async def authenticate(self, headers: Mapping[str, str]) -> RequestContext | None:
        return self.authenticate_now(headers)

    async def aclose(self) -> None:
        return None
