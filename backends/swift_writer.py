"""Writing one Swift object: a single PUT when small, a static large object (SLO) when not.

The writer does not know the object's size in advance, so it holds the first bytes in
memory, up to ``single_put_max`` (``min(segment_size, 8 MiB)``). If :meth:`commit` comes
first, the object is one PUT (with its md5 as ``ETag``, which Swift verifies). Past that,
the bytes stream into segments of ``segment_size`` bytes, one at a time, each a chunked
PUT fed through a one-piece hand-off (memory stays at a few pieces whatever the size),
and :meth:`commit` PUTs the manifest (``?multipart-manifest=put``) that names them, with
their sizes and etags, so Swift refuses a manifest over a wrong or missing segment. An
object larger than the buffer but within one segment is an SLO of one segment.

Nothing is visible at the object's name before the single PUT or the manifest PUT
completes. Segments live under ``<prefix>.segments/<image_id>/<upload>/``, a name unique
to this writer, so a retried upload never touches another attempt's segments; abort
deletes this writer's segments (the one being streamed is cut off, which Swift discards,
and deleted too in case it landed). Replacing an object that was a large object deletes
the old segments after the new object is committed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from .base import BackendError
from .swift_client import SwiftClient, object_path

if TYPE_CHECKING:
    from .swift import SwiftBackend

__all__ = ["SwiftWriter", "SINGLE_PUT_BUFFER", "SEGMENTS_DIR"]

_log = logging.getLogger(__name__)

SINGLE_PUT_BUFFER = 8 * 1024 * 1024
SEGMENTS_DIR = ".segments/"
_END = None


class _Segment:
    """One segment being streamed: a chunked PUT fed piece by piece."""

    def __init__(self, client: SwiftClient, path: str) -> None:
        self.path = path
        self.size = 0
        self._client = client
        self._slot: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)
        self._put = asyncio.ensure_future(client.put_stream(path, self._body(), {"Content-Type": "application/octet-stream"}))

    async def _body(self) -> AsyncIterator[bytes]:
        while (piece := await self._slot.get()) is not _END:
            yield piece

    async def _hand(self, piece: bytes | None) -> None:
        """Give the PUT one piece (or the end), unless it failed meanwhile."""
        handing = asyncio.ensure_future(self._slot.put(piece))
        await asyncio.wait({handing, self._put}, return_when=asyncio.FIRST_COMPLETED)
        if not handing.done():
            handing.cancel()
            response = await self._put  # raises the store's error, if it was one
            raise self._client.status_error(response, self.path, "PUT (segment, answered early)")

    async def feed(self, piece: bytes) -> None:
        await self._hand(piece)
        self.size += len(piece)

    async def finish(self) -> str:
        """End the body; return the segment's etag."""
        await self._hand(_END)
        response = await self._put
        if response.status_code != 201:
            raise self._client.status_error(response, self.path, "PUT (segment)")
        return str(response.headers.get("etag", "")).strip('"')

    async def cut(self) -> None:
        """Drop the upload mid-body: Swift discards an object whose body never ended."""
        self._put.cancel()
        try:
            await self._put
        except (asyncio.CancelledError, BackendError):
            pass


class SwiftWriter:
    """One object being written; see :class:`backends.base.Writer`. Not safe for concurrent use."""

    def __init__(self, backend: SwiftBackend, image_id: str) -> None:
        self._backend = backend
        self._container = backend.container
        self._name = backend.object_name(image_id)
        self._location = backend.location_for(image_id)
        self._segment_dir = f"{backend.prefix}{SEGMENTS_DIR}{image_id}/{secrets.token_hex(8)}/"
        self._segment_size = backend.options.segment_size
        self.single_put_max = min(self._segment_size, SINGLE_PUT_BUFFER)
        self._buffer = bytearray()
        self._current: _Segment | None = None
        self._done: list[dict[str, object]] = []  # finished segments, as the manifest lists them
        self._committed = False
        self._closed = False

    @property
    def streaming(self) -> bool:
        """Whether the object has outgrown the single-PUT buffer (it becomes an SLO)."""
        return self._current is not None or bool(self._done)

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("writer is closed", location=self._location)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self._check_open()
        if not self.streaming:
            if len(self._buffer) + len(data) <= self.single_put_max:
                self._buffer += data
                return
            held, self._buffer = bytes(self._buffer), bytearray()
            if held:
                await self._stream(held)
        await self._stream(data)

    async def _stream(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self._current is None:
                number = len(self._done) + 1
                path = object_path(self._container, f"{self._segment_dir}{number:08d}")
                self._current = _Segment(self._backend.client, path)
            take = min(len(view), self._segment_size - self._current.size)
            piece = view[:take]
            await self._current.feed(data if take == len(data) and isinstance(data, bytes) else bytes(piece))
            view = view[take:]
            if self._current.size == self._segment_size:
                await self._finish_segment()

    async def _finish_segment(self) -> None:
        assert self._current is not None
        segment, self._current = self._current, None
        try:
            etag = await segment.finish()
        except BaseException:
            self._current = segment  # abort deletes it, in case it landed
            raise
        self._done.append({"path": segment.path, "etag": etag, "size_bytes": segment.size})

    async def commit(self) -> str:
        """PUT the object (or the manifest over its segments); return its location."""
        if self._committed:
            return self._location
        self._check_open()
        path = object_path(self._container, self._name)
        try:
            old_segments = await self._backend.segments_of(self._container, self._name)
            if self.streaming:
                if self._current is not None:
                    await self._finish_segment()
                response = await self._backend.client.send(
                    "PUT", path, params={"multipart-manifest": "put"}, content=json.dumps(self._done).encode(),
                    headers={"Content-Type": "application/octet-stream"},
                )
            else:
                body = bytes(self._buffer)
                response = await self._backend.client.send(
                    "PUT", path, content=body,
                    headers={"Content-Type": "application/octet-stream", "ETag": hashlib.md5(body).hexdigest()},
                )
            if response.status_code != 201:
                raise self._backend.client.status_error(response, path, "PUT")
        except BaseException:
            await self.abort()
            raise
        self._committed = self._closed = True
        self._buffer = bytearray()
        if old_segments:
            await self._backend.delete_quietly(old_segments, f"old segments of {self._location}")
        return self._location

    async def abort(self) -> None:
        """Discard what was written: cut the segment in flight, delete every segment. Safe twice; no-op after commit."""
        if self._committed or (self._closed and self._current is None and not self._done):
            return
        self._closed = True
        self._buffer = bytearray()
        paths = [str(seg["path"]) for seg in self._done]
        self._done = []
        current, self._current = self._current, None
        if current is not None:
            await current.cut()
            paths.append(current.path)
        if paths:
            await self._backend.delete_quietly(paths, f"segments of an aborted upload to {self._location}")
