"""One Swift account over httpx: the token (renewed on 401), requests, and error translation.

python-swiftclient is synchronous (a thread per request, a copy per piece), so the store
speaks Swift's HTTP API itself on the http client the service already uses. Every
request carries the current token; a 401 renews it once (one login at a time, shared
by all waiters) and repeats the request, unless its body was a stream that is gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from .base import BackendError, BackendNotFound, BackendUnavailable
from .swift_auth import SwiftOptions, Token, make_authenticator

__all__ = ["SwiftClient", "SwiftStats", "object_path"]

_log = logging.getLogger(__name__)

# A streamed upload cannot be repeated after a 401: start it with a token this fresh.
STREAM_MARGIN = 60.0


@dataclass
class SwiftStats:
    """What the client did: logins (the first and every renewal) and 401s it answered by renewing."""

    logins: int = 0
    renewals: int = 0


def object_path(container: str, obj: str | None = None) -> str:
    """``/container[/object]``, each part quoted (slashes inside the object name kept)."""
    path = "/" + quote(container, safe="")
    return path if obj is None else path + "/" + quote(obj, safe="/")


class SwiftClient:
    """The account behind one ``[swift]`` table. Safe to share between the tasks of one loop.

    ``store`` names the store in every error message (``swift://container``).
    """

    def __init__(self, options: SwiftOptions, store: str) -> None:
        self.options = options
        self.store = store
        self.stats = SwiftStats()
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(options.timeout),
            limits=httpx.Limits(max_connections=options.max_connections, max_keepalive_connections=options.max_connections),
            verify=options.verify,
            trust_env=False,
            headers={"Accept-Encoding": "identity"},
        )
        self._auth = make_authenticator(options, self.http, store)
        self._token: Token | None = None
        self._login_lock = asyncio.Lock()

    # -- tokens -------------------------------------------------------------------------

    def _usable(self, token: Token | None, refused: Token | None, fresh_for: float | None) -> bool:
        return token is not None and token is not refused and (fresh_for is None or token.fresh_for(fresh_for))

    async def token(self, *, refused: Token | None = None, fresh_for: float | None = None) -> Token:
        """The current token; a new one if there is none, it was ``refused``, or (with
        ``fresh_for``) it expires within that many seconds.

        Plain requests do not look at the expiry: Swift's 401 is the authority (clocks and
        revocations aside), and a refused request is simply sent again.
        """
        current = self._token
        if current is not None and self._usable(current, refused, fresh_for):
            return current
        async with self._login_lock:
            current = self._token  # someone else may have logged in while we waited
            if current is None or not self._usable(current, refused, fresh_for):
                if refused is not None and current is refused:
                    self.stats.renewals += 1
                self._token = current = await self._auth.login()
                self.stats.logins += 1
            return current

    async def login(self) -> Token:
        """Log in now, whatever token is held (start-up checks)."""
        async with self._login_lock:
            self._token = token = await self._auth.login()
            self.stats.logins += 1
            return token

    # -- requests -----------------------------------------------------------------------

    def _where(self, path: str) -> str:
        return f"{self.store}{path}"

    def translate(self, exc: httpx.HTTPError, path: str) -> BackendError:
        """One httpx error -> the store's error types (the only place that maps them)."""
        if isinstance(exc, httpx.TimeoutException):
            return BackendUnavailable(f"{self.store}: Swift timed out ({type(exc).__name__})", location=self._where(path))
        return BackendUnavailable(f"{self.store}: Swift request failed: {type(exc).__name__}: {exc}", location=self._where(path))

    def status_error(self, response: httpx.Response, path: str, what: str) -> BackendError:
        code = response.status_code
        if code in (404, 410):
            return BackendNotFound(f"{self.store}: no such object {path} ({code})", location=self._where(path))
        return BackendUnavailable(f"{self.store}: Swift answered {code} to {what} {path}", location=self._where(path))

    async def send(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        content: bytes | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send one request with the token, renewing it once on 401; return whatever Swift answered.

        With ``stream`` the body is left unread: the caller must ``aclose()`` the response.
        Raises :class:`BackendUnavailable` when Swift cannot be reached or the login fails.
        """
        refused: Token | None = None
        for _ in range(2):
            token = await self.token(refused=refused)
            request = self.http.build_request(
                method, token.storage_url + path, params=params, content=content,
                headers={**(headers or {}), "X-Auth-Token": token.value},
            )
            try:
                response = await self.http.send(request, stream=stream)
            except httpx.HTTPError as exc:
                raise self.translate(exc, path) from exc
            if response.status_code != 401:
                return response
            await response.aclose()
            refused = token
        raise BackendUnavailable(f"{self.store}: Swift refused a fresh token (401) for {method} {path}", location=self._where(path))

    async def put_stream(self, path: str, body: AsyncIterable[bytes], headers: Mapping[str, str] | None = None) -> httpx.Response:
        """PUT a streamed (chunked) body. It cannot be sent twice, so the token is renewed *before*
        it nears expiry instead of after a 401."""
        token = await self.token(fresh_for=STREAM_MARGIN)
        try:
            return await self.http.put(
                token.storage_url + path, content=body, headers={**(headers or {}), "X-Auth-Token": token.value}
            )
        except httpx.HTTPError as exc:
            raise self.translate(exc, path) from exc

    async def delete_objects(self, paths: list[str], concurrency: int = 4) -> None:
        """DELETE each path (404 is fine), ``concurrency`` at a time; raise the first failure after all ran."""
        pending = iter(paths)
        failures: list[BackendError] = []

        async def worker() -> None:
            for path in pending:
                try:
                    response = await self.send("DELETE", path)
                    if response.status_code not in (200, 204, 404):
                        failures.append(self.status_error(response, path, "DELETE"))
                except BackendError as exc:
                    failures.append(exc)

        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(paths)))))
        if failures:
            raise failures[0]

    async def list_objects(self, container: str, prefix: str) -> list[str]:
        """Every object name in ``container`` starting with ``prefix`` (all pages)."""
        names: list[str] = []
        marker = ""
        while True:
            path = object_path(container)
            response = await self.send("GET", path, params={"format": "json", "prefix": prefix, "marker": marker})
            if response.status_code == 404:
                return names
            if response.status_code not in (200, 204):
                raise self.status_error(response, path, "GET (listing)")
            page = [entry["name"] for entry in response.json()] if response.status_code == 200 else []
            if not page:
                return names
            names.extend(page)
            marker = page[-1]

    async def aclose(self) -> None:
        await self._auth.aclose()
        await self.http.aclose()
