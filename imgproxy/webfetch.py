"""web-download's HTTP client: every hop checked, every connection to the checked address.

:func:`open_web_download` follows redirects itself. For each URL (the first and every
``Location``) it asks the :class:`~imgproxy.urlfilter.UrlFilter` for a
:class:`~imgproxy.urlfilter.Target` (rules checked, name resolved once) and sends the
request to that address: the URL's host is replaced by the address, ``Host`` keeps the
name, and TLS still verifies the certificate for the name (``sni_hostname``). No second
DNS lookup happens between the check and the connection. Each download has its own
client (no connection made for one name is reused for another).
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from backends import PIECE_SIZE
from backends.http import redact

from .urlfilter import Target, UrlFilter, UrlRefused

__all__ = ["WebDownloadError", "WebBody", "open_web_download"]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class WebDownloadError(Exception):
    """The URL could not be downloaded; the message is for the task's ``message``."""


@dataclass
class WebBody:
    """An answered download: ``size`` from ``Content-Length`` (None if not sent)."""

    url: str
    size: int | None
    _response: httpx.Response

    async def pieces(self) -> AsyncIterator[bytes]:
        """The body in pieces of at most ``PIECE_SIZE``; raises WebDownloadError when it
        breaks off or differs from its ``Content-Length``."""
        received = 0
        try:
            async for piece in self._response.aiter_raw(PIECE_SIZE):
                received += len(piece)
                if self.size is not None and received > self.size:
                    raise WebDownloadError(f"{redact(self.url)} sent more than its Content-Length of {self.size}")
                yield piece
        except httpx.HTTPError as exc:
            raise WebDownloadError(f"download from {redact(self.url)} failed after {received} bytes: {exc}") from exc
        if self.size is not None and received != self.size:
            raise WebDownloadError(f"{redact(self.url)} sent {received} of {self.size} bytes")


def _pinned_request(target: Target, timeout: float) -> httpx.Request:
    """A GET of ``target.url`` sent to ``target.address``, with the name in Host and SNI."""
    parts = urlsplit(target.url)
    address = ipaddress.ip_address(target.address)
    literal = f"[{address}]" if address.version == 6 else str(address)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@" if userinfo else ""
    netloc += f"{literal}:{target.port}"
    url = urlunsplit((target.scheme, netloc, parts.path or "/", parts.query, ""))
    host_header = parts.hostname or target.host
    if ":" in host_header:
        host_header = f"[{host_header}]"
    if parts.port is not None:
        host_header += f":{parts.port}"
    extensions: dict[str, object] = {"timeout": httpx.Timeout(timeout).as_dict()}
    if target.scheme == "https" and parts.hostname:
        extensions["sni_hostname"] = parts.hostname
    return httpx.Request("GET", url, headers={"Host": host_header, "Accept-Encoding": "identity"},
                         extensions=extensions)


@asynccontextmanager
async def open_web_download(url: str, url_filter: UrlFilter, *, timeout: float = 30.0, max_redirects: int = 5,
                            verify: bool | str = True) -> AsyncIterator[WebBody]:
    """Open ``url`` for reading, following at most ``max_redirects`` redirects, each checked.

    Raises :class:`WebDownloadError` (refused URL or redirect, a status other than 200,
    too many redirects, a connection failure). The body must be read inside the block.
    The transport is used directly: httpx's client would parse ``Location`` itself.
    """
    async with httpx.AsyncHTTPTransport(verify=verify, http1=True, http2=False, retries=0) as transport:
        current = url
        for hop in range(max_redirects + 1):
            try:
                target = await url_filter.pin_async(current)
            except UrlRefused as exc:
                where = "URL" if hop == 0 else f"redirect to {redact(current)}"
                raise WebDownloadError(f"{where} refused: {exc}") from None
            try:
                response = await transport.handle_async_request(_pinned_request(target, timeout))
            except httpx.HTTPError as exc:
                raise WebDownloadError(f"cannot download {redact(current)}: {type(exc).__name__}: {exc}") from exc
            try:
                location = response.headers.get("location")
                if response.status_code in _REDIRECTS and location is not None:
                    try:
                        current = urljoin(current, location.strip())
                    except ValueError:
                        raise WebDownloadError(f"{redact(current)} redirected to a malformed URL") from None
                    continue
                if response.status_code != 200:
                    raise WebDownloadError(f"{redact(current)} answered {response.status_code}")
                raw = response.headers.get("content-length", "").strip()
                yield WebBody(current, int(raw) if raw.isdigit() else None, response)
                return
            finally:
                await response.aclose()
        raise WebDownloadError(f"{redact(url)} redirected more than {max_redirects} times")
