"""The text and JSON log formats: time stamps and request lines as an operator reads them."""

from __future__ import annotations

import json
import logging
import time

from imgproxy.ops.logs import ACCESS_FIELDS, JsonFormatter, TextFormatter

FIELDS = {"method": "GET", "route": "/v2/images/{image_id}", "path": "/v2/images/x", "status": 200, "bytes": 532,
          "duration_s": 0.000353, "cache": "-"}


def _record(created: float, access: dict[str, object] | None = None) -> logging.LogRecord:
    record = logging.LogRecord("imgproxy.access", logging.INFO, __file__, 0, "%s %s", ("GET", "/x"), None)
    record.created, record.msecs = created, (created - int(created)) * 1000
    if access is not None:
        record.access = access
    return record


def _stamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int((created - int(created)) * 1000):03d}Z"


def test_time_stamps_follow_the_clock_across_seconds() -> None:
    text, js = TextFormatter(), JsonFormatter()
    # Within one second, into the next, back (a clock set back), and far ahead.
    for created in (1795000000.001, 1795000000.999, 1795000001.0, 1795000001.5, 1795000000.25, 1895000000.75):
        record = _record(created)
        assert text.format(record).startswith(_stamp(created) + " INFO imgproxy.access - GET /x"), created
        assert json.loads(js.format(record))["time"] == _stamp(created)


def test_a_request_line_names_its_fields_in_order() -> None:
    line = TextFormatter().format(_record(1795000000.5, FIELDS))
    assert line.endswith(" ".join(f"{key}={FIELDS[key]}" for key in ACCESS_FIELDS))
    assert "method=GET route=/v2/images/{image_id} path=/v2/images/x status=200 bytes=532 duration_s=0.000353 cache=-" \
        in line
    doc = json.loads(JsonFormatter().format(_record(1795000000.5, FIELDS)))
    assert {key: doc[key] for key in ACCESS_FIELDS} == FIELDS
