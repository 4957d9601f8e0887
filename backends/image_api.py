"""Read-only store over an upstream image API (Glance, or another imgproxy): its ``/v2/images/{id}/file``.

A location is the URL of one image's data on the upstream API:
``glance+http://central:9292/v2/images/<id>/file`` (``glance+https`` likewise). A plain
``http(s)://.../v2/images/<id>/file`` is accepted too, for callers that build the backend
directly (the edge does). Every request carries an ``X-Auth-Token`` chosen per image by the
``token`` source: the edge passes the token of a caller the upstream authorized for that
image moments ago, else its own ``upstream_token``; configured by scheme (the
``[glance+http]`` table), ``token`` is one fixed token.

Ranged reads send ``Range``. An upstream that refuses ranges for an image (Glance answers
400 "Getting images randomly from this store is not supported" for stores without random
access) or ignores them (200 with the whole image) has that image read once,
sequentially, for every ranged read (:mod:`backends.sequential`). The first ranged read
of a location finds out which kind it is (remembered for a while); reads that arrive
meanwhile wait for its status line, so a herd of fills never opens one whole-image stream each.

Errors: 404/410/204 -> :class:`BackendNotFound`; anything else that is not the asked-for
data (401/403, 5xx, a timeout, a short body) -> :class:`BackendUnavailable`. Retries are
the caller's (the cache's fills retry from the last byte).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from .base import BackendNotFound, BackendUnavailable, ByteRange
from .http import HttpOptions, _content_length, _content_range, _translate, redact
from .sequential import RangeIgnored, RangeServed, SequentialReads

__all__ = ["ImageApiBackend", "TokenSource", "data_location"]

log = logging.getLogger(__name__)

# image id -> the X-Auth-Token to read it with (None: send none).
TokenSource = Callable[[str], "str | None"]

_PREFIXES = ("glance+http://", "glance+https://")
_HEADERS = {"Accept-Encoding": "identity"}


def data_location(base_url: str, image_id: str) -> str:
    """The location of ``image_id``'s data on the image API at ``base_url``."""
    return f"{base_url.rstrip('/')}/v2/images/{image_id}/file"


def _split(location: str) -> tuple[str, str]:
    """``(data URL over http(s), image id)`` of a location; BackendNotFound if it names no image data."""
    url = location[len("glance+"):] if location.startswith(_PREFIXES) else location
    parts = urlsplit(url)
    segments = parts.path.rstrip("/").split("/")
    if parts.scheme not in ("http", "https") or len(segments) < 4 or segments[-1] != "file" \
            or segments[-3] != "images":
        raise BackendNotFound("not an image API data URL (…/v2/images/<id>/file)", location=redact(location))
    return url, segments[-2]


class ImageApiBackend:
    """A :class:`~backends.base.ReadBackend` over an image API's image data.

    Safe to share between the tasks of one event loop; :meth:`aclose` closes the client
    and drops the spooled sequential reads.
    """

    read_chunks = 2  # each GET is authorized upstream: two chunks per read (backends.base.read_chunks)

    def __init__(self, token: TokenSource, options: HttpOptions | None = None, *,
                 spool_dir: Path | None = None, retries: int = 3) -> None:
        self.options = options or HttpOptions()
        self._token = token
        self._client = httpx.AsyncClient(
            http1=True, http2=False, timeout=httpx.Timeout(self.options.timeout),
            limits=httpx.Limits(max_connections=self.options.max_connections,
                                max_keepalive_connections=self.options.max_connections),
            follow_redirects=True, max_redirects=self.options.max_redirects, verify=self.options.verify,
            proxy=self.options.proxy, trust_env=False,
        )
        spool = spool_dir or Path(tempfile.gettempdir()) / "imgproxy-spool"
        self.sequential = SequentialReads(spool, retries=retries, stall_timeout=self.options.timeout)
        self._sizes: dict[str, int] = {}

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> ImageApiBackend:
        """Build from a scheme's options table: ``token``, ``spool_dir`` and the http store's keys."""
        opts = dict(options)
        token = opts.pop("token", None)
        spool = opts.pop("spool_dir", None)
        if token is not None and not isinstance(token, str):
            raise ValueError("image API store option 'token': must be a string")
        return cls(lambda _image_id: token, HttpOptions.from_mapping(opts),
                   spool_dir=Path(spool) if spool else None)

    def _headers(self, image_id: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = dict(_HEADERS)
        token = self._token(image_id)
        if token:
            headers["X-Auth-Token"] = token
        headers.update(extra or {})
        return headers

    async def size(self, location: str) -> int:
        """The image's ``size`` from the upstream's image show.

        Raises BackendNotFound (404/410, or no data yet), BackendUnavailable otherwise.
        """
        known = self._sizes.get(location)
        if known is not None:
            return known
        url, image_id = _split(location)
        try:
            response = await self._client.get(url[: -len("/file")], headers=self._headers(image_id))
        except httpx.HTTPError as exc:
            raise _translate(exc, location) from exc
        _check(response, location)
        size = response.json().get("size")
        if not isinstance(size, int):
            raise BackendNotFound("the image has no data yet", location=redact(location))
        self._sizes[location] = size
        return size

    async def read(self, location: str, byte_range: ByteRange | None = None) -> AsyncIterator[bytes]:
        """Stream the image data (or ``byte_range`` of it); see the module docs for the modes."""
        url, image_id = _split(location)
        if byte_range is None:
            response = await self._send(url, image_id, location, {})
            want = await _checked(response, lambda: self._want(response, location, None))
            async for piece in _body(response, location, want):
                yield piece
            return
        if byte_range.length == 0:
            return

        async def open_range(wanted: ByteRange) -> RangeServed | RangeIgnored:
            response = await self._send(url, image_id, location, {"Range": f"bytes={wanted.start}-{wanted.end - 1}"})
            code = response.status_code
            if code == 206:
                want = await _checked(response, lambda: self._want(response, location, wanted))
                return RangeServed(_body(response, location, want))
            if code in (200, 400):
                # 200: Range ignored, and this response already streams the whole image: the
                # tape takes it over. 400: refused; the tape opens a plain GET.
                log.warning("image API %s %s ranged reads of %s; reading it sequentially, once",
                            urlsplit(url).netloc, "ignores" if code == 200 else "refuses", image_id)
                if code == 400:
                    await response.aclose()
                    return RangeIgnored(None, None)
                size = _content_length(response)
                return RangeIgnored(_body(response, location, size), size)
            await response.aread()
            await response.aclose()
            _check(response, location)
            raise BackendUnavailable(f"image API answered {code}", location=redact(location))

        async def open_stream() -> AsyncIterator[bytes]:
            async for piece in self.read(location):
                yield piece

        async for piece in self.sequential.read_range(location, byte_range, open_range, open_stream,
                                                      lambda: self.size(location)):
            yield piece

    async def _send(self, url: str, image_id: str, location: str, headers: Mapping[str, str]) -> httpx.Response:
        """Send a GET of ``url``; the open (streaming) response, which the caller closes."""
        request = self._client.build_request("GET", url, headers=self._headers(image_id, headers))
        try:
            return await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _translate(exc, location) from exc

    @staticmethod
    def _want(response: httpx.Response, location: str, byte_range: ByteRange | None) -> int | None:
        """How many body bytes to yield (None: all), after checking the status line."""
        if byte_range is None:
            if response.status_code != 200:
                _check(response, location)
                raise BackendUnavailable(f"image API answered {response.status_code}", location=redact(location))
            return _content_length(response)
        first, last, _ = _content_range(response)
        if first != byte_range.start or last is None or last + 1 < byte_range.end:
            raise BackendUnavailable(f"image API sent range {response.headers.get('content-range')!r} "
                                     f"for {byte_range}", location=redact(location))
        return byte_range.length

    async def aclose(self) -> None:
        await self.sequential.aclose()
        await self._client.aclose()


def _check(response: httpx.Response, location: str) -> None:
    """Raise unless ``response`` is a 2xx other than 204 (an image without data)."""
    code = response.status_code
    if code in (404, 410, 204):
        raise BackendNotFound(f"image API answered {code}", location=redact(location))
    if code in (401, 403):
        raise BackendUnavailable(f"image API refused the token ({code})", location=redact(location))
    if not 200 <= code < 300:
        raise BackendUnavailable(f"image API answered {code}", location=redact(location))


async def _checked(response: httpx.Response, check: Callable[[], int | None]) -> int | None:
    """``check()``'s result; if it raises, ``response`` is closed first."""
    try:
        return check()
    except BaseException:
        await response.aclose()
        raise


async def _pieces(response: httpx.Response, location: str, want: int | None) -> AsyncIterator[bytes]:
    """Yield ``want`` body bytes (None: all) as they arrive; raise BackendUnavailable if fewer come.

    Pieces are what the socket gave (no re-chunking into PIECE_SIZE: that would hold bytes
    back until a MiB is in, and a stalled read would lose what did arrive before it).
    """
    sent = 0
    try:
        async for piece in response.aiter_raw():
            if want is not None and sent + len(piece) >= want:
                piece = piece[: want - sent]
                sent += len(piece)
                if piece:
                    yield piece
                return
            sent += len(piece)
            yield piece
    except httpx.HTTPError as exc:
        raise _translate(exc, location) from exc
    if want is not None and sent < want:
        raise BackendUnavailable(f"image API sent {sent} of {want} bytes", location=redact(location))


async def _body(response: httpx.Response, location: str, want: int | None) -> AsyncIterator[bytes]:
    """``want`` bytes (None: all) of an open response's body; closes it when done or closed."""
    try:
        async for piece in _pieces(response, location, want):
            yield piece
    finally:
        await response.aclose()
