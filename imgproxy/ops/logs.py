"""Log lines: the request id on every line logged while a request runs, text or JSON.

``logging_config(settings)`` is the ``dictConfig`` the CLI hands uvicorn, so every worker
process logs the same way: one handler on stderr for the root logger (imgproxy's own
loggers, uvicorn's, the stores'), the formatter ``log_format`` names, uvicorn's own access
log off (the service writes one line per request itself, :mod:`imgproxy.ops.access`).
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from typing import Any

from ..settings import Settings

__all__ = ["ACCESS_LOGGER", "REQUEST_ID", "JsonFormatter", "TextFormatter", "logging_config"]

# Set by the access middleware for the duration of a request; "-" outside one.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("imgproxy_request_id", default="-")

ACCESS_LOGGER = "imgproxy.access"

# The fields a request line carries (``extra={"access": {...}}``), in this order.
ACCESS_FIELDS = ("method", "route", "path", "status", "bytes", "duration_s", "cache")
# A request line's text: its fields as ``key=value``, in that order.
_ACCESS_TEXT = " ".join(f"{key}={{{key}}}" for key in ACCESS_FIELDS)


class _Timestamps:
    """``2026-11-27T14:00:00.123Z`` of a record's time; the seconds spelled once a second
    (a request line each request would spell them again). Thread-safe: one tuple swapped."""

    def __init__(self) -> None:
        self._last: tuple[int, str] = (-1, "")

    def of(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        last = self._last
        if last[0] != second:
            last = self._last = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{last[1]}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger> <request id> <message>``; a request line's fields as ``key=value``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timestamps = _Timestamps()

    def format(self, record: logging.LogRecord) -> str:
        access = getattr(record, "access", None)
        message = record.getMessage() if access is None else _ACCESS_TEXT.format_map(access)
        line = f"{self._timestamps.of(record)} {record.levelname} {record.name} {REQUEST_ID.get()} {message}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time``, ``level``, ``logger``, ``request_id``, ``message``,
    and a request line's fields (:data:`ACCESS_FIELDS`) at the top level."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timestamps = _Timestamps()

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": self._timestamps.of(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": REQUEST_ID.get(),
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if access is not None:
            doc.update(access)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def logging_config(settings: Settings) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` for ``settings`` (uvicorn's ``log_config``)."""
    from uvicorn.config import LOG_LEVELS  # knows uvicorn's "trace"

    level = LOG_LEVELS[settings.log_level]
    formatter = JsonFormatter if settings.log_format == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"imgproxy": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "imgproxy",
                                "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": logging.CRITICAL, "propagate": False},
            # Request lines are written whatever log_level says, unless request_log is off
            # (like a web server's access log beside its error log).
            ACCESS_LOGGER: {"level": logging.INFO if settings.request_log else logging.CRITICAL + 1},
        },
    }
