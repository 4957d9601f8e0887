"""The ``s3`` store: image data as objects in an S3 bucket (AWS, Ceph RGW, Swift's S3 API, MinIO, rclone).

Objects live at ``<prefix>/<image_id>`` in the bucket and are named by
``s3://<bucket>/<prefix>/<image_id>``; a location outside the configured bucket and prefix
is refused. Options come from the ``[s3]`` table (:class:`~backends.s3_options.S3Options`).

The client is obstore (Rust's ``object_store``): requests run on its own threads, so the
event loop only sees finished pieces, and it does ranges, multipart uploads and retries.

Wire rules, and why:

* Reads stream in pieces of at most ``PIECE_SIZE``; a ranged read is one ranged GET
  (the cache's fills issue several in parallel).
* Ranged reads of a plain-http endpoint (the usual in-cloud RGW or Swift endpoint) go to a
  presigned URL (signed locally by obstore) over :mod:`backends.http_fast`: measured with
  ``python -m bench.s3_cpu``, that costs a quarter to a half less CPU per GB than obstore's own
  ranged GETs (0.43-0.50 vs 0.66-0.80 s/GB, 4 MiB ranges x4, 2 cores), and a cache fill is
  mostly such reads. Option
  ``presigned_ranges = false`` sends them through obstore. Any answer the lean client does not
  take (errors, refusals) is asked again through obstore, whose error then says what happened.
* Some servers answer a ranged GET with ``200`` and a ``Content-Range`` naming the asked
  range (rclone 1.75's ``serve s3``) where S3 says ``206``. The lean client accepts exactly
  that answer; obstore refuses it, so if obstore meets it, the backend says so once in the
  log and sends later ranged reads to presigned URLs (plain http only).
* Errors are translated once, here, into :class:`BackendNotFound` (no such object) and
  :class:`BackendUnavailable` (unreachable, refused credentials, 5xx, short objects).
  Messages name the store (bucket, prefix, endpoint) and carry the server's error code;
  a secret never appears in them, nor in ``repr``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import obstore
from obstore.exceptions import PermissionDeniedError, UnauthenticatedError
from obstore.store import S3Store

from .base import PIECE_SIZE, BackendError, BackendNotFound, BackendUnavailable, ByteRange, CopyReader, RangeReader
from .fast_read import StoreReader, store_read
from .http_fast import FastBody, FastPool, fast_target
from .s3_options import S3Options
from .s3_writer import S3Writer

if TYPE_CHECKING:
    from obstore import GetOptions
    from obstore.store import S3Config

__all__ = ["S3Backend"]

_log = logging.getLogger(__name__)

# obstore joins what the connection delivered until it has this much: pieces of 768 KiB
# up to a little over 1 MiB; the rare bigger one is cut to PIECE_SIZE.
_MIN_PIECE = PIECE_SIZE - 256 * 1024
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_S3_CODE = re.compile(r"<Code>([A-Za-z0-9.]+)</Code>")
# Timings and obstore's wording around the request line, which say nothing to an operator.
_NOISE = re.compile(r" in [0-9.]+(?:ns|µs|us|ms|s)\b|^The operation lacked the necessary privileges to complete for path [^:]*: ")
_NOT_PARTIAL = "non-partial response when range requested"
# A presigned URL lives long enough for one ranged read to start.
_PRESIGN_FOR = timedelta(minutes=15)


def _pieces(data: bytes) -> list[bytes]:
    if len(data) <= PIECE_SIZE:
        return [data]
    return [data[i : i + PIECE_SIZE] for i in range(0, len(data), PIECE_SIZE)]


class S3Backend:
    """A bucket (and key prefix) of image objects. Implements :class:`backends.base.WriteBackend`.

    Safe to share between the tasks of one event loop: obstore's client is thread-safe
    and every call makes its own request.
    """

    # Each GET is signed, authorized and looked up (and billed, on AWS): four chunks per read
    # (backends.base.read_chunks; Swift's s3api, cold 1 GiB: vs_direct 0.84-0.89 with 4, 0.75-0.80 with 2).
    read_chunks = 4

    def __init__(self, bucket: str, prefix: str, options: S3Options) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.options = options
        where = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.name = f"{where} at {options.endpoint}" if options.endpoint else where
        self._store = S3Store(
            bucket,
            prefix=prefix or None,
            config=self._config(),
            client_options={
                "allow_http": options.allow_http,
                "connect_timeout": timedelta(seconds=options.timeout),
                "read_timeout": timedelta(seconds=options.timeout),
                # A whole-object read may take long; stalls are caught by read_timeout.
                "timeout": timedelta(days=1),
            },
            retry_config={
                "max_retries": options.retries,
                "retry_timeout": timedelta(seconds=options.timeout * (options.retries + 1)),
                "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2), "base": 2},
            },
        )
        # Ranged reads through presigned URLs (see the module doc), or None: through obstore.
        self._fast: FastPool | None = None
        if options.presigned_ranges and self._plain_http():
            self._fast = self._fast_pool()

    def _config(self) -> S3Config:
        opts = self.options
        config: S3Config = {"region": opts.region, "virtual_hosted_style_request": not opts.path_style}
        if opts.endpoint:
            config["endpoint"] = opts.endpoint
        if opts.access_key is not None and opts.secret_key is not None:
            config["access_key_id"] = opts.access_key
            config["secret_access_key"] = opts.secret_key.reveal()
        if opts.session_token is not None:
            config["session_token"] = opts.session_token.reveal()
        return config

    def __repr__(self) -> str:
        return f"S3Backend({self.name!r})"

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> S3Backend:
        """``s3://bucket[/prefix]``.

        Raises :class:`BackendError` for a URL that names no bucket (it may come from a
        request, as an image location) and ``ValueError`` naming a bad option.
        """
        return cls(*cls._parse(url, options))

    @classmethod
    def validate(cls, url: str, options: Mapping[str, Any]) -> None:
        """Check the URL and options as :meth:`from_url` does, without building a client."""
        cls._parse(url, options)

    @staticmethod
    def _parse(url: str, options: Mapping[str, Any]) -> tuple[str, str, S3Options]:
        parts = urlsplit(url)
        if parts.scheme != "s3" or parts.query or parts.fragment or "@" in parts.netloc:
            raise BackendError(f"s3 store URL must be s3://bucket[/prefix], got {url!r}", location=url)
        bucket = parts.netloc
        if not _BUCKET.match(bucket):
            raise BackendError(f"s3 store URL {url!r}: {bucket!r} is not a valid bucket name", location=url)
        segments = [s for s in unquote(parts.path).split("/") if s]
        if any(s in (".", "..") for s in segments):
            raise BackendError(f"s3 store URL {url!r}: the prefix must not contain '.' or '..'", location=url)
        return bucket, "/".join(segments), S3Options.from_mapping(options)

    # -- naming ---------------------------------------------------------------

    def location_for(self, image_id: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}/{image_id}" if self.prefix else f"s3://{self.bucket}/{image_id}"

    @staticmethod
    def _check_name(name: str, location: str) -> None:
        if not name or "/" in name or name.startswith(".") or "\0" in name:
            raise BackendError(f"not a valid object name: {name!r}", location=location)

    def key_for(self, location: str) -> str:
        """The object key (below the prefix) behind ``location``; BackendError if it is not in this store."""
        parts = urlsplit(location)
        path = unquote(parts.path).lstrip("/")
        head = f"{self.prefix}/" if self.prefix else ""
        if parts.scheme != "s3" or parts.netloc != self.bucket or not path.startswith(head):
            raise BackendError(f"location is outside the s3 store {self.name}", location=location)
        name = path[len(head):]
        self._check_name(name, location)
        return name

    # -- errors ---------------------------------------------------------------

    def _describe(self, exc: BaseException) -> str:
        """One line about ``exc``: obstore's first line without the response body, plus S3's error code."""
        text = str(exc)
        line = text.split("\n", 1)[0].split(": <?xml", 1)[0].strip().rstrip(":")
        line = _NOISE.sub("", line.removeprefix("Generic S3 error: "))
        code = _S3_CODE.search(text)
        if code is not None:
            line = f"{line} ({code.group(1)})"
        for secret in self.options.secrets():
            line = line.replace(secret, "***")
        return line[:400] or type(exc).__name__

    def _translate(self, exc: BaseException, location: str) -> BackendError:
        """Map one foreign exception to the store's error types (the only place that does)."""
        if isinstance(exc, BackendError):
            return exc
        what = self._describe(exc)
        if isinstance(exc, FileNotFoundError):
            return BackendNotFound(f"no such object in the s3 store {self.name}", location=location)
        if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
            return BackendUnavailable(f"the s3 store {self.name} refused the request: {what}", location=location)
        if isinstance(exc, ValueError):  # obstore: an unusable path or argument
            return BackendError(f"s3 store {self.name}: {what}", location=location)
        return BackendUnavailable(f"the s3 store {self.name} failed: {what}", location=location)

    # -- reading --------------------------------------------------------------

    async def size(self, location: str) -> int:
        key = self.key_for(location)
        try:
            meta = await obstore.head_async(self._store, key)
        except Exception as exc:
            raise self._translate(exc, location) from exc
        return int(meta["size"])

    async def read(self, location: str, byte_range: ByteRange | None = None) -> AsyncIterator[bytes]:
        """Stream the object (or ``byte_range`` of it) in pieces of at most ``PIECE_SIZE``.

        Raises :class:`BackendNotFound` for a missing object and :class:`BackendUnavailable`
        for everything else (also mid-stream), including a range past the object's end.
        Closing the iterator early drops the response and its connection.
        """
        key = self.key_for(location)
        if byte_range is not None and byte_range.length == 0:
            # No valid Range names zero bytes; still tell a missing or short object.
            if byte_range.start > await self.size(location):
                raise BackendUnavailable(f"object is shorter than the range in {self.name}", location=location)
            return
        if byte_range is not None and self._fast is not None:
            async for piece in self._read_presigned(key, location, byte_range):
                yield piece
            return
        options: GetOptions = {"range": (byte_range.start, byte_range.end)} if byte_range else {}
        try:
            result = await obstore.get_async(self._store, key, options=options)
        except Exception as exc:
            if byte_range is None or _NOT_PARTIAL not in str(exc) or not self._use_presigned():
                raise self._translate(exc, location) from exc
            result = None
        if result is None:
            assert byte_range is not None
            async for piece in self._read_presigned(key, location, byte_range):
                yield piece
            return
        start, end = result.range
        want = byte_range or ByteRange(0, int(result.meta["size"]))
        if start != want.start or end < want.end:
            raise BackendUnavailable(f"object is shorter than the range in {self.name}", location=location)
        sent = 0
        try:
            async for data in result.stream(min_chunk_size=_MIN_PIECE):
                for piece in _pieces(bytes(data) if not isinstance(data, bytes) else data):
                    sent += len(piece)
                    yield piece
        except Exception as exc:
            raise self._translate(exc, location) from exc
        if sent != want.length:
            raise BackendUnavailable(f"the s3 store {self.name} sent {sent} of {want.length} bytes", location=location)

    def _plain_http(self) -> bool:
        return self.options.endpoint is not None and fast_target(self.options.endpoint + "/") is not None

    def _fast_pool(self) -> FastPool:
        return FastPool(timeout=self.options.timeout, max_connections=self.options.max_connections,
                        user_agent="imgproxy", range_statuses=frozenset({200, 206}))

    def _use_presigned(self) -> bool:
        """Switch ranged reads to presigned URLs for a server that answers them with 200; False if
        the endpoint cannot (https: the lean client speaks plain http only)."""
        if not self._plain_http():
            return False
        if self._fast is None:
            _log.warning("s3 store %s answers ranged GETs with 200 and a Content-Range, not 206; "
                         "ranged reads go to presigned URLs from now on", self.name)
            self._fast = self._fast_pool()
        return True

    async def open_reader(self, location: str, byte_range: ByteRange) -> RangeReader:
        """A reader of ``byte_range`` (see :func:`backends.base.open_reader`): over presigned
        URLs the kernel puts the bytes where it is told; through obstore they are copied."""
        if self._fast is None or byte_range.length == 0:
            return CopyReader(self.read(location, byte_range), location)
        body = await self._open_presigned(self.key_for(location), location, byte_range)
        return StoreReader(body, f"the s3 store {self.name} failed", location)

    async def _read_presigned(self, key: str, location: str, byte_range: ByteRange) -> AsyncIterator[bytes]:
        body = await self._open_presigned(key, location, byte_range)
        with store_read(body, f"the s3 store {self.name} failed", location):
            async for piece in body.pieces():
                yield piece

    async def _open_presigned(self, key: str, location: str, byte_range: ByteRange) -> FastBody:
        """The body of a ranged GET of a presigned URL; the caller holds it in :func:`store_read` or a
        :class:`StoreReader`, which close it."""
        assert self._fast is not None
        try:
            url = await obstore.sign_async(self._store, "GET", key, _PRESIGN_FOR)
        except Exception as exc:
            raise self._translate(exc, location) from exc
        target = fast_target(url)
        try:
            body = await self._fast.open(target, byte_range, location) if target is not None else None
        except BackendError as exc:
            raise BackendUnavailable(f"the s3 store {self.name} failed: {exc}", location=location) from exc
        if body is None:
            # Not a usable answer (404, 403, 416, refused...): obstore's request says which error.
            try:
                await obstore.get_async(self._store, key, options={"range": (byte_range.start, byte_range.end)})
            except Exception as exc:
                raise self._translate(exc, location) from exc
            raise BackendUnavailable(f"the s3 store {self.name} gave no usable answer to a ranged GET", location=location)
        return body

    # -- writing --------------------------------------------------------------

    async def open_writer(self, image_id: str) -> S3Writer:
        location = self.location_for(image_id)
        self._check_name(image_id, location)
        return S3Writer(self._store, image_id, location, part_size=self.options.part_size,
                        concurrency=self.options.upload_concurrency,
                        translate=lambda exc: self._translate(exc, location))

    async def delete(self, location: str) -> None:
        """Delete the object; a missing one is not an error (S3 answers 204 either way)."""
        key = self.key_for(location)
        try:
            await obstore.delete_async(self._store, key)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise self._translate(exc, location) from exc

    # -- health ---------------------------------------------------------------

    async def check(self) -> None:
        """Raise :class:`BackendUnavailable` unless the bucket can be listed with these credentials now.

        One list request (one page): cheap enough for start-up.
        """
        where = self.location_for("").rstrip("/")
        try:
            async for _ in obstore.list(self._store, chunk_size=1):
                break
        except FileNotFoundError as exc:
            raise BackendUnavailable(f"the s3 store {self.name}: no such bucket", location=where) from exc
        except Exception as exc:
            error = self._translate(exc, where)
            raise BackendUnavailable(str(error), location=where) from exc

    async def aclose(self) -> None:
        """Close the presigned-read connections; obstore's pool goes with the store."""
        if self._fast is not None:
            self._fast.close()
