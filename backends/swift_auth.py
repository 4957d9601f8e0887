"""Options of the ``[swift]`` table, and the two ways to get a Swift token.

* tempauth (and anything speaking Swift's v1.0 auth): ``GET auth_url`` with
  ``X-Auth-User``/``X-Auth-Key``; the answer carries the token and the storage URL.
* Keystone v3 (keystoneauth1, an optional extra): a password login scoped to a project;
  the storage URL comes from the catalog (``object-store``). keystoneauth1 is synchronous,
  so its calls run in a worker thread.

The key is never part of a message, a repr or a log line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from anyio import to_thread

from .base import BackendUnavailable

__all__ = ["SwiftOptions", "Token", "Authenticator", "TempAuth", "KeystoneAuth", "make_authenticator"]

_log = logging.getLogger(__name__)

MiB = 1024 * 1024
# Swift's default max_file_size: no single object (segment) may be larger.
MAX_SEGMENT = 5 * 1024 * MiB


@dataclass(frozen=True, slots=True)
class SwiftOptions:
    """The ``[swift]`` table, validated.

    ``segment_size``: objects larger than this are written as static large objects of
    segments this big. ``storage_url`` overrides the URL the auth answer names (e.g. an
    internal endpoint). ``timeout`` bounds connecting and each read/write, not a whole
    transfer. ``create_container``: a missing container is created on the first write.
    """

    auth_url: str
    user: str
    key: str = field(repr=False)
    auth_version: str = "1"
    project_name: str | None = None
    user_domain_name: str = "Default"
    project_domain_name: str = "Default"
    region_name: str | None = None
    interface: str = "public"
    storage_url: str | None = None
    segment_size: int = 200 * MiB
    timeout: float = 30.0
    max_connections: int = 32
    verify: bool | str = True
    create_container: bool = True

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> SwiftOptions:
        """Validate ``options``; raise ``ValueError`` naming the bad key (never its value for ``key``)."""
        known = {f for f in cls.__dataclass_fields__}
        for name in options:
            if name not in known:
                raise ValueError(f"swift store option {name!r}: unknown (known: {', '.join(sorted(known))})")
        values = dict(options)
        for name in ("auth_url", "user", "key"):
            if not isinstance(values.get(name), str) or not values[name]:
                raise ValueError(f"swift store option {name!r}: required (a non-empty string)")
        if urlsplit(values["auth_url"]).scheme not in ("http", "https"):
            raise ValueError("swift store option 'auth_url': must be an http(s) URL")
        version = str(values.get("auth_version") or _guess_version(values["auth_url"]))
        version = {"1.0": "1", "v1": "1", "v1.0": "1", "v3": "3", "3.0": "3"}.get(version, version)
        if version not in ("1", "3"):
            raise ValueError("swift store option 'auth_version': must be 1 (tempauth) or 3 (Keystone v3)")
        values["auth_version"] = version
        if version == "3" and not values.get("project_name"):
            raise ValueError("swift store option 'project_name': required with Keystone v3 auth")
        try:
            for name, kind in (("segment_size", int), ("max_connections", int), ("timeout", float)):
                if name in values:
                    if isinstance(values[name], bool):
                        raise TypeError(f"{name} must be a number")
                    values[name] = kind(values[name])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"swift store option: {exc}") from None
        opts = cls(**values)
        if not 1 <= opts.segment_size <= MAX_SEGMENT:
            raise ValueError(f"swift store option 'segment_size': must be 1 .. {MAX_SEGMENT} bytes")
        if opts.timeout <= 0:
            raise ValueError("swift store option 'timeout': must be > 0 seconds")
        if opts.max_connections < 1:
            raise ValueError("swift store option 'max_connections': must be >= 1")
        if not isinstance(opts.verify, (bool, str)):
            raise ValueError("swift store option 'verify': must be true, false or a CA bundle path")
        if not isinstance(opts.create_container, bool):
            raise ValueError("swift store option 'create_container': must be true or false")
        for name in ("project_name", "region_name", "storage_url", "user_domain_name", "project_domain_name", "interface"):
            value = getattr(opts, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"swift store option {name!r}: must be a string")
        return opts


def _guess_version(auth_url: str) -> str:
    return "3" if urlsplit(auth_url).path.rstrip("/").endswith("/v3") else "1"


@dataclass(frozen=True, slots=True)
class Token:
    """A token, the account URL it is good for, and when it expires (monotonic; None: unknown)."""

    value: str = field(repr=False)
    storage_url: str
    expires: float | None

    def fresh_for(self, seconds: float) -> bool:
        return self.expires is None or self.expires - time.monotonic() > seconds


class Authenticator(Protocol):
    """Logs in and returns a new token. Raises :class:`BackendUnavailable` (message without the key)."""

    async def login(self) -> Token: ...

    async def aclose(self) -> None: ...


class TempAuth:
    """Swift v1.0 auth (tempauth, swauth, and the v1 face of many Swift clusters)."""

    def __init__(self, options: SwiftOptions, client: httpx.AsyncClient, store: str) -> None:
        self._options = options
        self._client = client
        self._store = store

    async def login(self) -> Token:
        opts = self._options
        headers = {"X-Auth-User": opts.user, "X-Auth-Key": opts.key}
        try:
            response = await self._client.get(opts.auth_url, headers=headers)
        except httpx.HTTPError as exc:
            _log.warning("%s: cannot reach the auth endpoint %s: %r", self._store, opts.auth_url, exc)
            raise BackendUnavailable(
                f"{self._store}: cannot reach its auth endpoint ({type(exc).__name__})", location=self._store
            ) from exc
        if response.status_code in (401, 403):
            _log.warning("%s: %s refused the credentials of %r (%d)", self._store, opts.auth_url, opts.user, response.status_code)
            raise BackendUnavailable(
                f"{self._store}: the store's credentials were refused ({response.status_code})", location=self._store
            )
        token = response.headers.get("x-auth-token") or response.headers.get("x-storage-token")
        storage_url = opts.storage_url or response.headers.get("x-storage-url")
        if not 200 <= response.status_code < 300 or not token or not storage_url:
            _log.warning("%s: %s answered %d without a token", self._store, opts.auth_url, response.status_code)
            raise BackendUnavailable(
                f"{self._store}: its auth endpoint answered {response.status_code} without a token", location=self._store
            )
        life = response.headers.get("x-auth-token-expires", "")
        expires = time.monotonic() + float(life) if life.replace(".", "", 1).isdigit() else None
        return Token(token, storage_url.rstrip("/"), expires)

    async def aclose(self) -> None:
        """The http client belongs to the backend."""


class KeystoneAuth:
    """Keystone v3 password auth scoped to a project, through keystoneauth1 in a worker thread."""

    def __init__(self, options: SwiftOptions, store: str) -> None:
        self._options = options
        self._store = store
        self._session: Any = None

    def _login_sync(self) -> Token:
        try:
            from keystoneauth1 import exceptions, session
            from keystoneauth1.identity import v3
        except ImportError as exc:
            raise BackendUnavailable(
                f"{self._store}: Keystone auth needs keystoneauth1 (pip install 'imgproxy[swift]')", location=self._store
            ) from exc
        opts = self._options
        if self._session is None:
            auth = v3.Password(
                auth_url=opts.auth_url, username=opts.user, password=opts.key,
                user_domain_name=opts.user_domain_name, project_name=opts.project_name,
                project_domain_name=opts.project_domain_name,
            )
            self._session = session.Session(auth=auth, verify=opts.verify, timeout=opts.timeout)
        else:
            self._session.invalidate()  # asked again: the last token was refused
        try:
            value = self._session.get_token()
            storage_url = opts.storage_url or self._session.get_endpoint(
                service_type="object-store", interface=opts.interface, region_name=opts.region_name
            )
            expires_at = self._session.auth.auth_ref.expires if self._session.auth.auth_ref else None
        except exceptions.Unauthorized as exc:
            _log.warning("%s: Keystone %s refused the credentials of %r", self._store, opts.auth_url, opts.user)
            raise BackendUnavailable(f"{self._store}: Keystone refused the store's credentials (401)", location=self._store) from exc
        except exceptions.ClientException as exc:
            _log.warning("%s: Keystone %s: %r", self._store, opts.auth_url, exc)
            raise BackendUnavailable(f"{self._store}: Keystone login failed ({type(exc).__name__})", location=self._store) from exc
        if not storage_url:
            raise BackendUnavailable(f"{self._store}: no object-store endpoint in the Keystone catalog", location=self._store)
        expires = None
        if expires_at is not None:
            expires = time.monotonic() + (expires_at.timestamp() - time.time())
        return Token(value, str(storage_url).rstrip("/"), expires)

    async def login(self) -> Token:
        return await to_thread.run_sync(self._login_sync)

    async def aclose(self) -> None:
        self._session = None


def make_authenticator(options: SwiftOptions, client: httpx.AsyncClient, store: str) -> Authenticator:
    if options.auth_version == "3":
        return KeystoneAuth(options, store)
    return TempAuth(options, client, store)
