"""Options of the ``s3`` store (the ``[s3]`` table of the config), validated once.

Secrets (``secret_key``) are held in :class:`Secret`, whose ``repr`` and ``str`` never show
the value, so neither a log line nor an error message built from the options can leak it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["S3Options", "Secret", "MiB"]

MiB = 1024 * 1024
# S3's own bounds on a multipart upload's parts (all but the last).
MIN_PART = 5 * MiB
MAX_PART = 5 * 1024 * MiB


class Secret:
    """A string that does not show itself; :meth:`reveal` hands it to the client that needs it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


_KNOWN = (
    "endpoint", "region", "access_key", "secret_key", "session_token", "path_style", "allow_http",
    "timeout", "retries", "part_size", "upload_concurrency", "max_connections", "presigned_ranges",
)


def _bool(values: Mapping[str, Any], key: str, default: bool) -> bool:
    value = values.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"s3 store option {key!r}: must be true or false, got {value!r}")
    return value


def _number(values: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = values.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"s3 store option {key!r}: must be a number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"s3 store option {key!r}: must be in {low:g} .. {high:g}, got {value!r}")
    return float(value)


def _text(values: Mapping[str, Any], key: str) -> str | None:
    value = values.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        # Never echo the value: it may be a secret.
        raise ValueError(f"s3 store option {key!r}: must be a non-empty string")
    return value


@dataclass(frozen=True, slots=True)
class S3Options:
    """How to reach the bucket and how to write to it.

    ``endpoint`` is the server's base URL (absent: AWS for ``region``). Plain ``http``
    endpoints are refused unless ``allow_http`` is set. ``path_style`` puts the bucket in
    the path (``endpoint/bucket/key``: Ceph RGW, Swift, rclone, MinIO) instead of the host
    name. Without ``access_key``/``secret_key`` the usual AWS credential chain applies
    (``AWS_*`` variables, instance roles). ``timeout`` bounds connecting and each wait for
    bytes, not a whole transfer; ``retries`` is how often one request is retried (5xx,
    connection errors) before the error reaches the caller. Uploads bigger than
    ``part_size`` go as multipart uploads with at most ``upload_concurrency`` parts in flight
    (memory near ``(upload_concurrency + 1) * part_size`` per upload). S3 takes at most 10,000
    parts, so ``part_size`` also bounds an image: 32 MiB parts take images up to 312 GiB. Larger
    parts are also cheaper to read: a store that keeps a multipart object as one object per part
    (Swift's s3api: a static large object) serves every part a read covers with a request of its
    own and checks the MD5 of each part it serves whole; the cache's ranged reads (16 MiB) lie
    inside 32 MiB parts and skip that check (the cache verifies each chunk with its own digest).
    ``presigned_ranges`` sends ranged reads of a plain-http endpoint to presigned URLs over
    imgproxy's lean HTTP client (cheaper in CPU than obstore's; see :mod:`backends.s3`).
    ``max_connections`` bounds that client's connections.
    """

    endpoint: str | None = None
    region: str = "us-east-1"
    access_key: str | None = None
    secret_key: Secret | None = field(default=None, repr=False)
    session_token: Secret | None = field(default=None, repr=False)
    path_style: bool = True
    allow_http: bool = False
    timeout: float = 30.0
    retries: int = 2
    part_size: int = 32 * MiB
    upload_concurrency: int = 2
    max_connections: int = 32
    presigned_ranges: bool = True

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> S3Options:
        """Validate ``options``; raise ``ValueError`` naming the bad key (never a secret's value)."""
        for key in options:
            if key not in _KNOWN:
                raise ValueError(f"s3 store option {key!r}: unknown (known: {', '.join(sorted(_KNOWN))})")
        d = cls()
        endpoint = _text(options, "endpoint")
        allow_http = _bool(options, "allow_http", d.allow_http)
        if endpoint is not None:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"s3 store option 'endpoint': must be an http(s) URL, got {endpoint!r}")
            if parts.username or parts.password:
                raise ValueError("s3 store option 'endpoint': credentials go in access_key/secret_key, not the URL")
            if parts.scheme == "http" and not allow_http:
                raise ValueError(f"s3 store option 'endpoint': {endpoint!r} is plain http; set allow_http = true to allow it")
            endpoint = endpoint.rstrip("/")
        access_key = _text(options, "access_key")
        secret_key = _text(options, "secret_key")
        if (access_key is None) != (secret_key is None):
            raise ValueError("s3 store options 'access_key' and 'secret_key': give both or neither")
        token = _text(options, "session_token")
        part_size = int(_number(options, "part_size", d.part_size, MIN_PART, MAX_PART))
        return cls(
            endpoint=endpoint,
            region=_text(options, "region") or d.region,
            access_key=access_key,
            secret_key=Secret(secret_key) if secret_key is not None else None,
            session_token=Secret(token) if token is not None else None,
            path_style=_bool(options, "path_style", d.path_style),
            allow_http=allow_http,
            timeout=_number(options, "timeout", d.timeout, 0.1, 3600),
            retries=int(_number(options, "retries", d.retries, 0, 10)),
            part_size=part_size,
            upload_concurrency=int(_number(options, "upload_concurrency", d.upload_concurrency, 1, 16)),
            max_connections=int(_number(options, "max_connections", d.max_connections, 1, 1024)),
            presigned_ranges=_bool(options, "presigned_ranges", d.presigned_ranges),
        )

    def secrets(self) -> tuple[str, ...]:
        """Every secret value, for scrubbing text that came from elsewhere (a server's error body)."""
        return tuple(s.reveal() for s in (self.secret_key, self.session_token) if s is not None)
