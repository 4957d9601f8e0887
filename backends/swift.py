"""The ``swift`` store: image data as objects in an OpenStack Swift container.

``swift://container[/prefix]`` names the store; an image's object is
``swift://container/<prefix><image_id>``. Credentials come from the ``[swift]`` table
(:class:`~backends.swift_auth.SwiftOptions`: tempauth or Keystone v3); the store reads
any container of that account, so locations another writer made are readable too.

Reads are ranged GETs streamed in pieces of at most ``PIECE_SIZE``. A ranged read of a
plain-http storage URL (the usual in-cloud endpoint) goes over :mod:`backends.http_fast`
with the token as a header: a cache fill is mostly such reads, and through httpx each
costs ~1.5 s of event-loop CPU per GiB. Any answer the lean client does not take (a 401
for an expired token, errors, odd heads) is asked again through httpx, which renews the
token or says what went wrong. Swift assembles
large objects itself, so the same reads serve plain objects, static large objects (what
this store writes, :mod:`backends.swift_writer`) and dynamic large objects: Glance's swift
driver writes an image over its large-object size as segments ``<object>-00001``, ...
next to a zero-byte manifest with ``X-Object-Manifest: <container>/<object>-``; HEAD
gives the whole size and a Range reads across segments.

Deleting removes a large object's segments too: ``?multipart-manifest=delete`` for an
SLO (Swift deletes the segments it lists), a listing by the manifest's prefix for a DLO.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from .base import PIECE_SIZE, BackendError, BackendUnavailable, ByteRange, CopyReader, RangeReader
from .fast_read import StoreReader, store_read
from .http_fast import FastBody, FastPool, fast_target
from .swift_auth import SwiftOptions
from .swift_client import SwiftClient, SwiftStats, object_path
from .swift_writer import SwiftWriter

__all__ = ["SwiftBackend", "SwiftOptions"]

_log = logging.getLogger(__name__)
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
# A token the lean client may put in a header line as it is (httpx checks any other).
_PLAIN_TOKEN = re.compile(r"^[\x21-\x7e]{1,8192}$")


def parse_swift_url(url: str) -> tuple[str, str]:
    """``swift://container/rest`` -> ``(container, rest)``; raise BackendError if it is not one."""
    parts = urlsplit(url)
    container = unquote(parts.netloc)
    if parts.scheme != "swift" or not container or "/" in container or parts.query or parts.fragment:
        raise BackendError(f"not a swift://container[/object] URL: {url!r}", location=url)
    return container, unquote(parts.path.lstrip("/"))


class SwiftBackend:
    """A Swift container. Implements :class:`backends.base.WriteBackend`.

    Safe to share between the tasks of one event loop; :meth:`aclose` closes the client.
    """

    read_chunks = 4  # each GET passes the proxy and an object server: four chunks per read (backends.base.read_chunks)

    def __init__(self, container: str, prefix: str, options: SwiftOptions) -> None:
        self.container = container
        self.prefix = prefix
        self.options = options
        self.store = f"swift://{container}" + (f"/{prefix}" if prefix else "")
        self.client = SwiftClient(options, self.store)
        # Ranged reads of a plain-http storage URL (see the module doc); others go through httpx.
        self.fast = FastPool(timeout=options.timeout, max_connections=options.max_connections,
                             user_agent="imgproxy")
        self._container_ready = False

    @classmethod
    def validate(cls, url: str, options: Mapping[str, Any]) -> None:
        """Check the URL and options as :meth:`from_url` does, without building a client."""
        parse_swift_url(url)
        SwiftOptions.from_mapping(options)

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> SwiftBackend:
        """``swift://container[/prefix]`` with the ``[swift]`` options. Does not touch the network."""
        container, prefix = parse_swift_url(url)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return cls(container, prefix, SwiftOptions.from_mapping(options))

    @property
    def stats(self) -> SwiftStats:
        return self.client.stats

    # -- naming -------------------------------------------------------------------------

    def object_name(self, image_id: str) -> str:
        if not image_id or "/" in image_id or image_id.startswith(".") or "\0" in image_id:
            raise BackendError(f"not a valid object name: {image_id!r}", location=self.store)
        return f"{self.prefix}{image_id}"

    def location_for(self, image_id: str) -> str:
        return f"swift://{self.container}/{self.object_name(image_id)}"

    def _path(self, location: str) -> str:
        container, obj = parse_swift_url(location)
        if not obj:
            raise BackendError(f"swift location names no object: {location!r}", location=location)
        return object_path(container, obj)

    # -- reading ------------------------------------------------------------------------

    async def check(self) -> None:
        """Log in and look at the container; raise :class:`BackendUnavailable` saying what is wrong."""
        await self.client.login()
        path = object_path(self.container)
        response = await self.client.send("HEAD", path)
        if response.status_code == 404 and self.options.create_container:
            return  # made by the first upload
        if response.status_code not in (200, 204):
            raise self.client.status_error(response, path, "HEAD (container)")

    async def size(self, location: str) -> int:
        """The object's size (a large object's whole size). Raises BackendNotFound / BackendUnavailable."""
        path = self._path(location)
        response = await self.client.send("HEAD", path)
        if response.status_code not in (200, 204):
            raise self.client.status_error(response, path, "HEAD")
        length = response.headers.get("content-length", "")
        if not length.isdigit():
            raise BackendUnavailable(f"{self.store}: Swift did not tell the size of {path}", location=location)
        return int(length)

    async def read(self, location: str, byte_range: ByteRange | None = None) -> AsyncIterator[bytes]:
        """Stream the object (or ``byte_range`` of it) in pieces of at most ``PIECE_SIZE``.

        Yields exactly the asked bytes or raises :class:`BackendNotFound` (404) or
        :class:`BackendUnavailable` (short object or range, truncated body, other
        statuses, timeouts, a failed login). Closing early closes the response.
        """
        path = self._path(location)
        if byte_range is not None and byte_range.length == 0:
            if byte_range.start > await self.size(location):
                raise BackendUnavailable(f"{self.store}: {path} is shorter than the range", location=location)
            return
        if byte_range is not None:
            body = await self._open_fast(path, location, byte_range)
            if body is not None:
                with store_read(body, f"{self.store}: Swift failed", location):
                    async for piece in body.pieces():
                        yield piece
                return
        async for piece in self._read_httpx(path, location, byte_range):
            yield piece

    async def _read_httpx(self, path: str, location: str, byte_range: ByteRange | None) -> AsyncIterator[bytes]:
        headers = {} if byte_range is None else {"Range": f"bytes={byte_range.start}-{byte_range.end - 1}"}
        response = await self.client.send("GET", path, headers=headers, stream=True)
        try:
            want = self._expected(response, path, byte_range)
            sent = 0
            async for piece in response.aiter_raw(PIECE_SIZE):
                if sent + len(piece) > want:
                    raise BackendUnavailable(f"{self.store}: {path} sent more than {want} bytes", location=location)
                sent += len(piece)
                yield piece
            if sent < want:
                raise BackendUnavailable(f"{self.store}: {path} sent {sent} of {want} bytes", location=location)
        except httpx.HTTPError as exc:
            raise self.client.translate(exc, path) from exc
        finally:
            await response.aclose()

    async def open_reader(self, location: str, byte_range: ByteRange) -> RangeReader:
        """A reader of ``byte_range`` (see :func:`backends.base.open_reader`): over the lean
        client the kernel puts the bytes where it is told; through httpx they are copied."""
        if not byte_range.length:
            return CopyReader(self.read(location, byte_range), location)
        path = self._path(location)
        body = await self._open_fast(path, location, byte_range)
        if body is None:
            return CopyReader(self._read_httpx(path, location, byte_range), location)
        return StoreReader(body, f"{self.store}: Swift failed", location)

    async def _open_fast(self, path: str, location: str, byte_range: ByteRange) -> FastBody | None:
        """The body of ``byte_range`` through the lean client, or ``None``: read it through httpx."""
        token = await self.client.token()
        target = fast_target(token.storage_url + path)
        if target is None or not _PLAIN_TOKEN.match(token.value):
            return None
        try:
            body = await self.fast.open(target, byte_range, location, {"X-Auth-Token": token.value})
        except BackendError as exc:
            raise BackendUnavailable(f"{self.store}: Swift failed: {exc}", location=location) from exc
        if body is None:
            self.fast.stats.fallbacks += 1
        else:
            self.fast.stats.reads += 1
        return body

    def _expected(self, response: httpx.Response, path: str, byte_range: ByteRange | None) -> int:
        """From the answer's head: how many body bytes must come (raise if it is not the asked bytes)."""
        code = response.status_code
        if code == 416:
            raise BackendUnavailable(f"{self.store}: {path} is shorter than the range (416)", location=self.store + path)
        if byte_range is None:
            length = response.headers.get("content-length", "")
            if code != 200 or not length.isdigit():
                raise self.client.status_error(response, path, "GET")
            return int(length)
        if code != 206:
            raise self.client.status_error(response, path, "a ranged GET")
        match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
        if match is None or int(match.group(1)) != byte_range.start:
            raise BackendUnavailable(
                f"{self.store}: {path} answered range {response.headers.get('content-range')!r} for {byte_range}",
                location=self.store + path,
            )
        if int(match.group(2)) + 1 < byte_range.end:
            raise BackendUnavailable(f"{self.store}: {path} is shorter than the range", location=self.store + path)
        return byte_range.length

    # -- writing ------------------------------------------------------------------------

    async def open_writer(self, image_id: str) -> SwiftWriter:
        """Start writing ``image_id``; logs in (and creates the container) first, so a store
        that cannot take the upload fails before any byte is received."""
        writer = SwiftWriter(self, image_id)
        if not self._container_ready:
            path = object_path(self.container)
            response = await self.client.send("HEAD", path)
            if response.status_code == 404 and self.options.create_container:
                response = await self.client.send("PUT", path)
            if response.status_code not in (200, 201, 202, 204):
                raise self.client.status_error(response, path, "HEAD/PUT (container)")
            self._container_ready = True
        return writer

    async def segments_of(self, container: str, obj: str) -> list[str]:
        """The segment paths of a large object (SLO or DLO); ``[]`` for a plain or missing object."""
        path = object_path(container, obj)
        response = await self.client.send("HEAD", path)
        if response.status_code == 404:
            return []
        if response.status_code not in (200, 204):
            raise self.client.status_error(response, path, "HEAD")
        if response.headers.get("x-static-large-object", "").lower() == "true":
            manifest = await self.client.send("GET", path, params={"multipart-manifest": "get"})
            if manifest.status_code != 200:
                raise self.client.status_error(manifest, path, "GET (manifest)")
            # Each entry names its segment as "/container/object" (not quoted).
            paths = [str(entry["name"]).lstrip("/").partition("/") for entry in manifest.json() if "name" in entry]
            return [object_path(seg_container, name) for seg_container, _, name in paths]
        dlo = response.headers.get("x-object-manifest")
        if dlo:
            seg_container, _, seg_prefix = unquote(dlo).partition("/")
            names = await self.client.list_objects(seg_container, seg_prefix)
            return [object_path(seg_container, name) for name in names]
        return []

    async def delete_quietly(self, paths: list[str], what: str) -> None:
        """Delete ``paths``; a failure is logged (the objects stay as orphans), not raised."""
        try:
            await self.client.delete_objects(paths)
        except BackendError as exc:
            _log.warning("%s: could not delete %d %s: %s", self.store, len(paths), what, exc)

    async def delete(self, location: str) -> None:
        """Delete the object and, for a large object, its segments. A missing object is not an error."""
        container, obj = parse_swift_url(location)
        path = self._path(location)
        head = await self.client.send("HEAD", path)
        if head.status_code == 404:
            return
        slo = head.headers.get("x-static-large-object", "").lower() == "true"
        # A DLO's segments are found through its manifest, so list them before it goes.
        dlo_segments = await self.segments_of(container, obj) if head.headers.get("x-object-manifest") else []
        params = {"multipart-manifest": "delete"} if slo else None
        response = await self.client.send("DELETE", path, params=params, headers={"Accept": "application/json"})
        if response.status_code not in (200, 204, 404):
            raise self.client.status_error(response, path, "DELETE")
        if slo:
            # Swift answers 200 and tells in the body whether every segment went.
            result = response.json()
            if result.get("Errors") or not str(result.get("Response Status", "")).startswith(("200", "204")):
                raise BackendUnavailable(
                    f"{self.store}: deleting the large object {path} failed: {result.get('Response Status')}, "
                    f"{result.get('Errors')}",
                    location=location,
                )
        if dlo_segments:
            await self.client.delete_objects(dlo_segments)

    async def aclose(self) -> None:
        self.fast.close()
        await self.client.aclose()
