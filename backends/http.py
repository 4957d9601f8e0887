"""Read-only store for image data that lives at an http(s) URL (Glance's ``http`` store).

The location is the URL itself. The store never writes: like Glance, an operator
adds such a location to an image and imgproxy reads (and caches) its bytes.

Wire rules, and why:

* One shared ``httpx.AsyncClient`` per backend: HTTP/1.1 keep-alive over a bounded
  pool, so a herd of fills reuses a few connections instead of opening one each.
* ``Accept-Encoding: identity`` and raw body bytes: a ``Range`` counts bytes of the
  representation as sent, so decoding would break offsets and length checks.
* Redirects are followed, at most ``max_redirects`` hops (Glance allows 5).
* Credentials in the URL (``http://user:pass@host/...``) become Basic auth (httpx
  does this) and are redacted from error messages.
* Ranged reads of plain ``http`` URLs (no userinfo, no proxy) take a lean path
  (:mod:`backends.http_fast`): httpx's stack costs ~1.5 s of event-loop CPU per GiB,
  which competes with serving clients. Any answer but a plain 206 falls back to httpx,
  so redirects, errors and stores ignoring ``Range`` behave exactly as before.
  :attr:`HttpBackend.fast_stats` counts what it did.
* Retries are not done here; a retrying wrapper composes over any ``ReadBackend``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from .base import (
    PIECE_SIZE,
    BackendError,
    BackendNotFound,
    BackendUnavailable,
    ByteRange,
)
from .http_fast import FastPool, FastStats, fast_target

__all__ = ["HttpBackend", "HttpOptions"]

_log = logging.getLogger(__name__)

_HEADERS = {"Accept-Encoding": "identity"}
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """Options of the ``[http]`` / ``[https]`` config sections.

    ``timeout`` bounds connecting, each read, each write and the wait for a pooled
    connection (seconds); it is not a bound on a whole download, so a slow but
    steady store still works. ``verify`` is a bool or a CA bundle path.
    """

    timeout: float = 30.0
    max_connections: int = 32
    max_redirects: int = 5
    verify: bool | str = True
    proxy: str | None = None

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> HttpOptions:
        """Validate ``options``; raise ``ValueError`` naming the bad key."""
        known = {"timeout", "max_connections", "max_redirects", "verify", "proxy"}
        for key in options:
            if key not in known:
                raise ValueError(f"http store option {key!r}: unknown (known: {', '.join(sorted(known))})")
        values = dict(options)
        defaults = cls()
        try:
            timeout = float(values.get("timeout", defaults.timeout))
            max_connections = int(values.get("max_connections", defaults.max_connections))
            max_redirects = int(values.get("max_redirects", defaults.max_redirects))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"http store option: {exc}") from None
        if timeout <= 0:
            raise ValueError("http store option 'timeout': must be > 0 seconds")
        if max_connections < 1:
            raise ValueError("http store option 'max_connections': must be >= 1")
        if max_redirects < 0:
            raise ValueError("http store option 'max_redirects': must be >= 0")
        verify = values.get("verify", defaults.verify)
        if not isinstance(verify, (bool, str)):
            raise ValueError("http store option 'verify': must be true, false or a CA bundle path")
        proxy = values.get("proxy")
        if proxy is not None and not isinstance(proxy, str):
            raise ValueError("http store option 'proxy': must be a URL")
        return cls(timeout, max_connections, max_redirects, verify, proxy or None)


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _translate(exc: Exception, location: str) -> BackendError:
    """Map one httpx exception to the store's error types (the only place that does)."""
    where = redact(location)
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return BackendNotFound(f"not a usable http(s) URL: {exc}", location=where)
    if isinstance(exc, httpx.TimeoutException):
        return BackendUnavailable(f"http store timed out ({type(exc).__name__})", location=where)
    if isinstance(exc, httpx.TooManyRedirects):
        return BackendUnavailable(f"http store redirected too often: {exc}", location=where)
    return BackendUnavailable(f"http store failed: {type(exc).__name__}: {exc}", location=where)


def _check_status(response: httpx.Response, location: str) -> None:
    """Raise unless ``response`` is a 2xx."""
    code = response.status_code
    if code in (404, 410):
        raise BackendNotFound(f"http store answered {code}", location=redact(location))
    if not 200 <= code < 300:
        raise BackendUnavailable(f"http store answered {code}", location=redact(location))


def _content_length(response: httpx.Response) -> int | None:
    raw = response.headers.get("content-length")
    return int(raw) if raw is not None and raw.strip().isdigit() else None


def _content_range(response: httpx.Response) -> tuple[int | None, int | None, int | None]:
    """``(first, last, total)`` of a ``Content-Range`` header; ``None`` for ``*`` or absent."""
    match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
    if match is None:
        return None, None, None
    first, last, total = match.groups()
    return (
        int(first) if first is not None else None,
        int(last) if last is not None else None,
        int(total) if total != "*" else None,
    )


class HttpBackend:
    """A :class:`~backends.base.ReadBackend` over http(s) URLs.

    Safe to share between the tasks of one event loop (the client is bound to the
    loop that first uses it). :meth:`aclose` closes the client.
    """

    def __init__(self, options: HttpOptions | None = None) -> None:
        self.options = options or HttpOptions()
        opts = self.options
        self._client = httpx.AsyncClient(
            http1=True,
            http2=False,
            timeout=httpx.Timeout(opts.timeout),
            limits=httpx.Limits(max_connections=opts.max_connections, max_keepalive_connections=opts.max_connections),
            follow_redirects=True,
            max_redirects=opts.max_redirects,
            verify=opts.verify,
            proxy=opts.proxy,
            # Proxies come from the config, not from whatever the environment holds.
            trust_env=False,
        )
        # Hosts already reported as ignoring Range (logged once each, not per read).
        self._no_range_hosts: set[str] = set()
        # Ranged reads over plain http, unless a proxy must see them (httpx talks to proxies).
        self._fast: FastPool | None = None
        if opts.proxy is None:
            agent = self._client.headers.get("user-agent", f"python-httpx/{httpx.__version__}")
            self._fast = FastPool(timeout=opts.timeout, max_connections=opts.max_connections, user_agent=agent)

    @property
    def fast_stats(self) -> FastStats:
        """What the lean ranged-GET path did (reads, fallbacks to httpx, connects, reuses)."""
        return self._fast.stats if self._fast is not None else FastStats()

    @classmethod
    def validate(cls, url: str, options: Mapping[str, Any]) -> None:
        """Check the options as :meth:`from_url` does, without building a client."""
        HttpOptions.from_mapping(options)

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> HttpBackend:
        """Build the backend; ``url`` only chose the scheme (any http(s) location is readable)."""
        return cls(HttpOptions.from_mapping(options))

    async def size(self, location: str) -> int:
        """Return the object's size: ``Content-Length`` of a HEAD, else of a 1-byte ranged GET.

        Raises :class:`BackendNotFound` on 404/410 (or an unusable URL) and
        :class:`BackendUnavailable` on other statuses, connection errors, timeouts,
        or when the store does not tell the size.
        """
        try:
            response = await self._client.head(location, headers=_HEADERS)
            if response.status_code in (404, 410):
                _check_status(response, location)
            if 200 <= response.status_code < 300:
                length = _content_length(response)
                if length is not None:
                    return length
            # No length, or HEAD refused (405, or a URL signed for GET only): ask with GET.
            return await self._size_by_get(location)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _translate(exc, location) from exc

    async def _size_by_get(self, location: str) -> int:
        headers = {**_HEADERS, "Range": "bytes=0-0"}
        async with self._client.stream("GET", location, headers=headers) as response:
            total: int | None
            if response.status_code in (206, 416):
                # 416 with "bytes */0" is how an empty object answers "bytes=0-0".
                _, _, total = _content_range(response)
                await response.aread()  # one byte at most: keep the connection reusable
            elif response.status_code == 200:
                total = _content_length(response)
            else:
                _check_status(response, location)
                total = None
            if total is None:
                raise BackendUnavailable("http store does not report the object's size", location=redact(location))
            return total

    async def supports_ranges(self, location: str) -> bool:
        """Whether the store advertises ``Accept-Ranges: bytes`` for ``location``."""
        try:
            response = await self._client.head(location, headers=_HEADERS)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _translate(exc, location) from exc
        _check_status(response, location)
        return "bytes" in response.headers.get("accept-ranges", "").lower()

    async def read(self, location: str, byte_range: ByteRange | None = None) -> AsyncIterator[bytes]:
        """Stream the object (or ``byte_range`` of it) in pieces of at most ``PIECE_SIZE``.

        Sends ``Range`` when a range is asked; a store that answers 200 instead gets
        its leading bytes skipped and the rest cut off (correct, but it costs the
        skipped bytes). Yields exactly the asked bytes or raises
        :class:`BackendUnavailable` (short object, truncated body, 5xx, timeout,
        connection error) or :class:`BackendNotFound` (404/410). Closing the
        iterator early closes the response (and its connection, if unread bytes remain).
        """
        if byte_range is not None and byte_range.length == 0:
            # "bytes=s-(s-1)" is no valid Range; still tell a missing or short object.
            if byte_range.start > await self.size(location):
                raise BackendUnavailable("object is shorter than the range", location=redact(location))
            return
        target = fast_target(location) if self._fast is not None and byte_range is not None else None
        if target is not None and self._fast is not None and byte_range is not None:
            body = await self._fast.open(target, byte_range, location)
            if body is not None:
                self._fast.stats.reads += 1
                try:
                    async for piece in body.pieces():
                        yield piece
                finally:
                    body.close()
                return
            self._fast.stats.fallbacks += 1
        headers = dict(_HEADERS)
        if byte_range is not None:
            headers["Range"] = f"bytes={byte_range.start}-{byte_range.end - 1}"
        try:
            async with self._client.stream("GET", location, headers=headers) as response:
                skip, want = self._window(response, location, byte_range)
                async for piece in self._pieces(response, location, skip, want):
                    yield piece
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _translate(exc, location) from exc

    def _window(self, response: httpx.Response, location: str, byte_range: ByteRange | None) -> tuple[int, int | None]:
        """From the response head: how many body bytes to skip, then how many to yield (None: all)."""
        code = response.status_code
        length = _content_length(response)
        if byte_range is None:
            if code != 200:
                _check_status(response, location)
                raise BackendUnavailable(f"http store answered {code} to a plain GET", location=redact(location))
            return 0, length
        if code == 206:
            first, last, _ = _content_range(response)
            if first != byte_range.start or last is None:
                raise BackendUnavailable(
                    f"http store sent range {response.headers.get('content-range')!r} for {byte_range}",
                    location=redact(location),
                )
            if last + 1 < byte_range.end:
                raise BackendUnavailable("object is shorter than the range", location=redact(location))
            return 0, byte_range.length
        if code == 416:
            raise BackendUnavailable("object is shorter than the range (416)", location=redact(location))
        _check_status(response, location)
        if code != 200:
            raise BackendUnavailable(f"http store answered {code} to a ranged GET", location=redact(location))
        host = response.url.host
        if host not in self._no_range_hosts:
            self._no_range_hosts.add(host)
            _log.warning("http store %s ignores Range; ranged reads will skip bytes (slow)", host)
        if length is not None and length < byte_range.end:
            raise BackendUnavailable("object is shorter than the range", location=redact(location))
        return byte_range.start, byte_range.length

    @staticmethod
    async def _pieces(response: httpx.Response, location: str, skip: int, want: int | None) -> AsyncIterator[bytes]:
        """Yield ``want`` body bytes after ``skip``, in pieces of at most PIECE_SIZE; check the count."""
        sent = 0
        async for chunk in response.aiter_raw(PIECE_SIZE):
            if skip:
                if len(chunk) <= skip:
                    skip -= len(chunk)
                    continue
                chunk, skip = chunk[skip:], 0
            if want is not None and sent + len(chunk) >= want:
                chunk = chunk[: want - sent]
                sent += len(chunk)
                if chunk:
                    yield chunk
                return  # the rest (a store ignoring Range) is not read; closing drops it
            sent += len(chunk)
            yield chunk
        if want is not None and sent < want:
            raise BackendUnavailable(f"http store sent {sent} of {want} bytes", location=redact(location))

    async def aclose(self) -> None:
        """Close the client and its pooled connections (the fast path's too)."""
        if self._fast is not None:
            self._fast.close()
        await self._client.aclose()
