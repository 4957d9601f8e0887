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
  which competes with serving clients. Any answer but a plain 206 (or a 200 with a
  length) falls back to httpx, so redirects and errors behave exactly as before.
  :attr:`HttpBackend.fast_stats` counts what it did.
* A store that ignores ``Range`` (200 with the whole object: Python's ``http.server``,
  nginx with ``max_ranges 0``) has that object read once, sequentially, for every ranged
  read of it (:mod:`backends.sequential`): the 200 that told us becomes that one read, and
  the verdict is kept per location for ``verdict_ttl`` seconds, so the cache's chunk fills
  neither re-read the object per chunk nor ask again per chunk.
* Retries are not done here; a retrying wrapper composes over any ``ReadBackend``.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
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
from .http_fast import FastBody, FastPool, FastStats, fast_target
from .sequential import RangeIgnored, RangeServed, SequentialReads

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
    loop that first uses it). :meth:`aclose` closes the client and drops the spooled
    sequential reads (kept in ``spool_dir``, an unlinked file per object being read).
    """

    def __init__(self, options: HttpOptions | None = None, *, spool_dir: Path | None = None,
                 verdict_ttl: float = 600.0) -> None:
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
        spool = spool_dir or Path(tempfile.gettempdir()) / "imgproxy-spool"
        self.sequential = SequentialReads(spool, stall_timeout=opts.timeout, verdict_ttl=verdict_ttl)
        # Ranged reads over plain http, unless a proxy must see them (httpx talks to proxies).
        self._fast: FastPool | None = None
        if opts.proxy is None:
            agent = self._client.headers.get("user-agent", f"python-httpx/{httpx.__version__}")
            self._fast = FastPool(timeout=opts.timeout, max_connections=opts.max_connections, user_agent=agent,
                                  whole_ok=True)

    @property
    def fast_stats(self) -> FastStats:
        """What the lean ranged-GET path did (reads, fallbacks to httpx, connects, reuses)."""
        return self._fast.stats if self._fast is not None else FastStats()

    @classmethod
    def validate(cls, url: str, options: Mapping[str, Any]) -> None:
        """Check the options as :meth:`from_url` does, without building a client."""
        _split_options(options)

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> HttpBackend:
        """Build the backend from the ``[http]`` table (``spool_dir`` and :class:`HttpOptions`'
        keys); ``url`` only chose the scheme (any http(s) location is readable)."""
        http_options, spool_dir = _split_options(options)
        return cls(http_options, spool_dir=spool_dir)

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

        Sends ``Range`` when a range is asked; a store that answers 200 instead has the
        object read once for all ranged reads (see the module docs). Yields exactly the
        asked bytes or raises :class:`BackendUnavailable` (short object, truncated body,
        5xx, timeout, connection error) or :class:`BackendNotFound` (404/410). Closing
        the iterator early closes the response (and its connection, if unread bytes remain).
        """
        if byte_range is None:
            try:
                async with self._client.stream("GET", location, headers=_HEADERS) as response:
                    code = response.status_code
                    if code != 200:
                        _check_status(response, location)
                        raise BackendUnavailable(f"http store answered {code} to a plain GET", location=redact(location))
                    async for piece in self._pieces(response, location, _content_length(response)):
                        yield piece
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise _translate(exc, location) from exc
            return
        if byte_range.length == 0:
            # "bytes=s-(s-1)" is no valid Range; still tell a missing or short object.
            if byte_range.start > await self.size(location):
                raise BackendUnavailable("object is shorter than the range", location=redact(location))
            return

        async def open_range(wanted: ByteRange) -> RangeServed | RangeIgnored:
            return await self._open_range(location, wanted)

        async for piece in self.sequential.read_range(location, byte_range, open_range,
                                                      lambda: self.read(location), lambda: self.size(location)):
            yield piece

    async def _open_range(self, location: str, byte_range: ByteRange) -> RangeServed | RangeIgnored:
        """Send one ranged GET (the fast path's, else httpx's); return once its head is in."""
        target = fast_target(location) if self._fast is not None else None
        if target is not None and self._fast is not None:
            fast = await self._fast.open(target, byte_range, location)
            if fast is not None:
                self._fast.stats.reads += 1
                if fast.whole:
                    self._note_ignored(target.host)
                    return RangeIgnored(_fast_pieces(fast), fast.length)
                return RangeServed(_fast_pieces(fast))
            self._fast.stats.fallbacks += 1
        headers = {**_HEADERS, "Range": f"bytes={byte_range.start}-{byte_range.end - 1}"}
        try:
            response = await self._client.send(self._client.build_request("GET", location, headers=headers),
                                               stream=True)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _translate(exc, location) from exc
        try:
            served = self._range_served(response, location, byte_range)
        except BaseException:
            await response.aclose()
            raise
        if served:
            return RangeServed(self._body(response, location, byte_range.length))
        self._note_ignored(response.url.host)
        length = _content_length(response)
        return RangeIgnored(self._body(response, location, length), length)

    @staticmethod
    def _range_served(response: httpx.Response, location: str, byte_range: ByteRange) -> bool:
        """Whether the answer is ``byte_range`` (a right 206), or else the whole object (a 200).
        Raises for any other answer."""
        code = response.status_code
        if code == 206:
            first, last, _ = _content_range(response)
            if first != byte_range.start or last is None:
                raise BackendUnavailable(
                    f"http store sent range {response.headers.get('content-range')!r} for {byte_range}",
                    location=redact(location),
                )
            if last + 1 < byte_range.end:
                raise BackendUnavailable("object is shorter than the range", location=redact(location))
            return True
        if code == 416:
            raise BackendUnavailable("object is shorter than the range (416)", location=redact(location))
        _check_status(response, location)
        if code != 200:
            raise BackendUnavailable(f"http store answered {code} to a ranged GET", location=redact(location))
        length = _content_length(response)
        if length is not None and length < byte_range.end:
            raise BackendUnavailable("object is shorter than the range", location=redact(location))
        return False

    def _note_ignored(self, host: str) -> None:
        if host not in self._no_range_hosts:
            self._no_range_hosts.add(host)
            _log.warning("http store %s ignores Range; each object of it is read once, sequentially, "
                         "for all ranged reads", host)

    async def _body(self, response: httpx.Response, location: str, want: int | None) -> AsyncIterator[bytes]:
        """``want`` bytes (None: all) of an open response's body; closes it when done or closed."""
        try:
            async for piece in self._pieces(response, location, want):
                yield piece
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _translate(exc, location) from exc
        finally:
            await response.aclose()

    @staticmethod
    async def _pieces(response: httpx.Response, location: str, want: int | None) -> AsyncIterator[bytes]:
        """Yield ``want`` body bytes (None: all), in pieces of at most PIECE_SIZE; check the count."""
        sent = 0
        async for chunk in response.aiter_raw(PIECE_SIZE):
            if want is not None and sent + len(chunk) >= want:
                chunk = chunk[: want - sent]
                sent += len(chunk)
                if chunk:
                    yield chunk
                return  # anything past it is not read; closing drops it
            sent += len(chunk)
            yield chunk
        if want is not None and sent < want:
            raise BackendUnavailable(f"http store sent {sent} of {want} bytes", location=redact(location))

    async def aclose(self) -> None:
        """Close the client and its pooled connections (the fast path's too), and the spools."""
        await self.sequential.aclose()
        if self._fast is not None:
            self._fast.close()
        await self._client.aclose()


async def _fast_pieces(body: FastBody) -> AsyncIterator[bytes]:
    """The pieces of a fast-path body; closes it when done or closed."""
    try:
        async for piece in body.pieces():
            yield piece
    finally:
        body.close()


def _split_options(options: Mapping[str, Any]) -> tuple[HttpOptions, Path | None]:
    """The ``[http]`` table as ``(HttpOptions, spool_dir)``; ``ValueError`` naming a bad key."""
    opts = dict(options)
    spool = opts.pop("spool_dir", None)
    if spool is not None and not isinstance(spool, str):
        raise ValueError("http store option 'spool_dir': must be a directory path")
    return HttpOptions.from_mapping(opts), Path(spool) if spool else None
