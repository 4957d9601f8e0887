"""``auth = "keystone"``: callers' tokens validated by Keystone v3, as keystonemiddleware does.

For each request: ``X-Auth-Token`` (and ``X-Service-Token`` when a service such as Nova
sends one) are looked up with ``GET /v3/auth/tokens`` (``X-Subject-Token``), authorized by
the service's own token. The answers are remembered (:class:`TokenCache`) for
``token_cache_seconds`` or until the token expires, whichever is sooner, so a revoked
token stops working within that time and a boot storm with one token asks Keystone once.

- A 404 from Keystone: the token is invalid, expired or revoked: 401 to the client with
  ``WWW-Authenticate: Keystone uri="<keystone_url>"``.
- A service token must be valid too (401 otherwise); its roles become the context's
  ``service_roles`` (not the caller's roles: Glance's policies read the user's), and when
  they hold ``service`` the user token may have expired (``allow_expired``: Nova's long
  operations outlive the user's token).
- Keystone unreachable, or refusing the service's own credentials: 503.
- Roles are the token's (Keystone expands implied roles: admin -> member -> reader);
  those Glance's defaults know are kept. Tokens of application credentials with access
  rules are refused by Keystone itself: the lookup does not claim access-rule support.

The service's own token comes from keystoneauth1 (a v3 Password or ApplicationCredential
plugin: login, discovery, renewal), whose calls are synchronous and rare (once per token
lifetime), so they run in a worker thread. The lookups themselves are one per uncached token
and many at once in a storm, so they go out on the event loop through httpx, with no thread
per lookup and a bounded connection pool.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from anyio import to_thread

from .context import ROLES, RequestContext
from .errors import Forbidden, ServiceUnavailable
from .settings import Settings

__all__ = ["KeystoneAuth", "Identity", "TokenCache", "ServiceCredentials"]

log = logging.getLogger("imgproxy.keystone")

# Tokens remembered per process; beyond this the least recently used go first.
MAX_CACHED_TOKENS = 10_000
# The service renews its own token this long before it expires (keystoneauth1's margin).
RENEW_MARGIN = 120.0
UNAVAILABLE = "The Keystone service is temporarily unavailable."


@dataclass(frozen=True, slots=True)
class Identity:
    """What Keystone says about one token."""

    user_id: str
    project_id: str | None  # None for a domain- or system-scoped token
    roles: frozenset[str]
    expires_at: float  # seconds since the epoch

    @classmethod
    def from_body(cls, body: Any) -> "Identity":
        """Parse a ``GET /v3/auth/tokens`` answer; ``ValueError`` when it is not one."""
        try:
            token = body["token"]
            project = token.get("project") or {}
            roles = frozenset(str(role["name"]) for role in token.get("roles") or ())
            expires = datetime.fromisoformat(str(token["expires_at"])).timestamp()
            return cls(str(token["user"]["id"]), project.get("id"), roles, expires)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a Keystone token: {exc!r}") from exc


class TokenCache:
    """Answers of token lookups, each until its deadline; one lookup per key at a time.

    ``get(key, lookup)`` returns the remembered answer, or awaits the lookup that is
    already running for ``key``, or starts one. A lookup runs as a task of the cache, not
    of the request that started it, so a client that goes away cancels nothing the others
    wait for; its exception goes to every waiter and is not remembered. Not thread-safe:
    one per event loop.
    """

    def __init__(self, max_entries: int = MAX_CACHED_TOKENS) -> None:
        self._entries: OrderedDict[str, tuple[float, Identity | None]] = OrderedDict()
        self._running: dict[str, asyncio.Task[tuple[Identity | None, float]]] = {}
        self._max = max_entries

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: str) -> Identity | None:
        """The answer remembered for ``key``; None when it is "not valid" or none is (nothing
        is looked up)."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= time.monotonic():
            return None
        self._entries.move_to_end(key)
        return entry[1]

    async def get(self, key: str, lookup: Callable[[], Awaitable[tuple[Identity | None, float]]]) -> Identity | None:
        """``lookup()`` returns ``(answer, seconds to remember it)``."""
        entry = self._entries.get(key)
        if entry is not None:
            if entry[0] > time.monotonic():
                self._entries.move_to_end(key)
                return entry[1]
            del self._entries[key]
        task = self._running.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._run(key, lookup), name="keystone-lookup")
            self._running[key] = task
            task.add_done_callback(lambda _t: self._running.pop(key, None))
        answer, _ttl = await asyncio.shield(task)
        return answer

    async def _run(self, key: str, lookup: Callable[[], Awaitable[tuple[Identity | None, float]]]
                   ) -> tuple[Identity | None, float]:
        answer, ttl = await lookup()
        if ttl > 0:
            self._entries[key] = (time.monotonic() + ttl, answer)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return answer, ttl

    async def aclose(self) -> None:
        running = list(self._running.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self._entries.clear()


class ServiceCredentials:
    """The service's own Keystone token, from a keystoneauth1 plugin, renewed before it expires.

    Every keystoneauth1 call runs in a worker thread; one at a time (an asyncio lock).
    Raises :class:`ServiceUnavailable` when Keystone cannot be reached or refuses the
    credentials (the message names neither the password nor the secret).
    """

    def __init__(self, plugin: Any, session: Any, what: str) -> None:
        self._plugin = plugin
        self._session = session
        self._what = what  # "user glance in project service", for log lines
        self._lock = asyncio.Lock()
        self._value: str | None = None
        self._renew_at = 0.0

    async def token(self, *, renew: bool = False) -> str:
        """The current token; a new one when ``renew`` (Keystone refused the last one)."""
        async with self._lock:
            if renew or self._value is None or time.time() >= self._renew_at:
                value, self._renew_at = await to_thread.run_sync(self._login, renew or self._value is not None)
                self._value = value
                return value
            return self._value

    def _login(self, fresh: bool) -> tuple[str, float]:
        from keystoneauth1 import exceptions

        if fresh:
            self._plugin.invalidate()
        try:
            access = self._plugin.get_access(self._session)
        except exceptions.Unauthorized as exc:
            log.error("Keystone refused the service's own credentials (%s): no token can be validated", self._what)
            raise ServiceUnavailable(UNAVAILABLE) from exc
        except exceptions.ClientException as exc:
            log.error("cannot log in to Keystone as %s: %s", self._what, type(exc).__name__)
            raise ServiceUnavailable(UNAVAILABLE) from exc
        now = time.time()
        life = access.expires.timestamp() - now if access.expires is not None else 3600.0
        renew_at = now + (life / 2 if life < 2 * RENEW_MARGIN else life - RENEW_MARGIN)
        return str(access.auth_token), renew_at


class KeystoneAuth:
    """:class:`imgproxy.auth.Authenticator` validating tokens with Keystone v3 (see the module doc)."""

    def __init__(self, keystone_url: str, credentials: ServiceCredentials, *, timeout: float = 10.0,
                 cache_seconds: float = 300.0, client: httpx.AsyncClient | None = None) -> None:
        self.challenge = f'Keystone uri="{keystone_url}"'
        self._tokens_url = _base_url(keystone_url) + "/v3/auth/tokens"
        self._credentials = credentials
        self._cache_seconds = cache_seconds
        self._cache = TokenCache()
        self._client = client or httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=32))
        self._failing = False
        self.lookups = 0  # requests to Keystone (token lookups), for tests and metrics

    @classmethod
    def from_settings(cls, settings: Settings) -> "KeystoneAuth":
        from keystoneauth1 import session
        from keystoneauth1.identity import v3

        auth_url = _base_url(settings.keystone_url) + "/v3"
        plugin: Any
        if settings.keystone_app_credential_id:
            plugin = v3.ApplicationCredential(auth_url=auth_url,
                                              application_credential_id=settings.keystone_app_credential_id,
                                              application_credential_secret=settings.keystone_app_credential_secret)
            what = f"application credential {settings.keystone_app_credential_id}"
        else:
            plugin = v3.Password(auth_url=auth_url, username=settings.keystone_user,
                                 password=settings.keystone_password, user_domain_name=settings.keystone_user_domain,
                                 project_name=settings.keystone_project,
                                 project_domain_name=settings.keystone_project_domain)
            what = f"user {settings.keystone_user} in project {settings.keystone_project}"
        credentials = ServiceCredentials(plugin, session.Session(auth=plugin, timeout=settings.keystone_timeout), what)
        return cls(settings.keystone_url.rstrip("/"), credentials, timeout=settings.keystone_timeout,
                   cache_seconds=settings.token_cache_seconds)

    async def authenticate(self, headers: Mapping[str, str]) -> RequestContext | None:
        token, service_token = _tokens(headers)
        if not token:
            return None
        service_roles: frozenset[str] = frozenset()
        if service_token:
            sender = await self.identity(service_token)
            if sender is None:
                return None  # keystonemiddleware refuses a request whose service token is invalid
            service_roles = _known_roles(sender)
        # Only a service (a token with the service role alongside) may act on an expired user token.
        user = await self.identity(token, allow_expired="service" in service_roles)
        return None if user is None else _context(user, service_roles)

    def authenticate_now(self, headers: Mapping[str, str]) -> RequestContext | None:
        """As :meth:`authenticate` when every token it names is remembered valid; else None."""
        token, service_token = _tokens(headers)
        if not token:
            return None
        service_roles: frozenset[str] = frozenset()
        if service_token:
            sender = self._remembered(service_token)
            if sender is None:
                return None
            service_roles = _known_roles(sender)
        user = self._remembered(token, allow_expired="service" in service_roles)
        return None if user is None else _context(user, service_roles)

    def _remembered(self, token: str, *, allow_expired: bool = False) -> Identity | None:
        if not (token.isascii() and token.isprintable()):
            return None
        return self._cache.peek(_cache_key(token, allow_expired))

    async def identity(self, token: str, *, allow_expired: bool = False) -> Identity | None:
        """What Keystone says of ``token`` (cached), or None when it is not valid."""
        if not (token.isascii() and token.isprintable()):
            return None  # no token Keystone issues; and not a header value httpx may send
        return await self._cache.get(_cache_key(token, allow_expired), lambda: self._lookup(token, allow_expired))

    async def _lookup(self, token: str, allow_expired: bool) -> tuple[Identity | None, float]:
        """``(identity or None, seconds to remember it)``; ServiceUnavailable when Keystone cannot say."""
        params = {"nocatalog": "1", **({"allow_expired": "1"} if allow_expired else {})}
        for renew in (False, True):
            own = await self._credentials.token(renew=renew)
            self.lookups += 1
            try:
                response = await self._client.get(self._tokens_url, params=params,
                                                  headers={"X-Auth-Token": own, "X-Subject-Token": token})
            except httpx.HTTPError as exc:
                self._trouble(f"cannot reach Keystone at {self._tokens_url}: {type(exc).__name__}")
                raise ServiceUnavailable(UNAVAILABLE) from exc
            if response.status_code == 404:
                self._fine()
                return None, self._cache_seconds
            if response.status_code == 200:
                try:
                    identity = Identity.from_body(response.json())
                except ValueError as exc:
                    self._trouble(f"Keystone answered a token lookup with something else: {exc}")
                    raise ServiceUnavailable(UNAVAILABLE) from exc
                self._fine()
                left = identity.expires_at - time.time()
                return identity, self._cache_seconds if allow_expired else min(self._cache_seconds, left)
            if response.status_code != 401:
                break
            # 401: the service's own token expired or was revoked; log in again, once.
        hint = " (the service's user needs the service or admin role to validate tokens)" \
            if response.status_code == 403 else ""
        self._trouble(f"Keystone answered {response.status_code} to a token lookup{hint}")
        raise ServiceUnavailable(UNAVAILABLE)

    def _trouble(self, message: str) -> None:
        """Log when lookups start failing, not once per request of an outage."""
        if not self._failing:
            log.error("%s; requests answer 503 until it recovers", message)
        self._failing = True

    def _fine(self) -> None:
        if self._failing:
            log.warning("Keystone answers token lookups again")
        self._failing = False

    async def aclose(self) -> None:
        await self._cache.aclose()
        await self._client.aclose()


def _cache_key(token: str, allow_expired: bool) -> str:
    return hashlib.sha256(token.encode()).hexdigest() + (":expired-ok" if allow_expired else "")


def _tokens(headers: Mapping[str, str]) -> tuple[str, str]:
    """The request's user token and service token ("" where absent)."""
    return headers.get("x-auth-token", "").strip(), headers.get("x-service-token", "").strip()


def _known_roles(identity: Identity) -> frozenset[str]:
    return frozenset(role for role in identity.roles if role in ROLES)


def _context(user: Identity, service_roles: frozenset[str]) -> RequestContext:
    """The context of a valid user token; Forbidden for one this service cannot use."""
    if user.project_id is None:
        raise Forbidden("This service needs a project-scoped token (this one is domain- or system-scoped).")
    roles = _known_roles(user)
    if not roles:
        raise Forbidden(f"The token has none of the roles this service knows ({', '.join(ROLES)}).")
    return RequestContext(project_id=user.project_id, roles=roles, user_id=user.user_id,
                          service_roles=service_roles)


def _base_url(keystone_url: str) -> str:
    """``http://ks:5000/v3/`` and ``http://ks:5000`` both -> ``http://ks:5000``."""
    return keystone_url.rstrip("/").removesuffix("/v3")
