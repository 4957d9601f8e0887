"""Reading a request's headers: RawHeaders answers lookups as Starlette's Headers does."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from imgproxy.heads import MAX_HEADER_LINE, RawHeaders, headers_too_large

RAW = [(b"host", b"example"), (b"x-roles", b"reader"), (b"x-auth-token", b"first"), (b"x-auth-token", b"second"),
       (b"x-project-id", "caf\xe9".encode("latin-1")), (b"x-empty", b"")]


def test_lookups_read_as_starlettes() -> None:
    ours, theirs = RawHeaders(RAW), Headers(raw=RAW)
    for key in ("host", "X-Auth-Token", "x-project-id", "x-empty", "x-missing", "X-ROLES"):
        assert ours.get(key) == theirs.get(key), key
        assert (key in ours) == (key in theirs), key
    assert ours["x-auth-token"] == "first" and ours.get("x-missing", "-") == "-"
    assert list(ours) == ["host", "x-roles", "x-auth-token", "x-project-id", "x-empty"] and len(ours) == 5
    with pytest.raises(KeyError):
        ours["x-missing"]


def test_headers_too_large() -> None:
    line = b"x" * (MAX_HEADER_LINE - 4 - 1)
    assert not headers_too_large([(b"a", line)])
    assert headers_too_large([(b"ab", line)])
    assert headers_too_large([(b"a", b"x" * 1000)] * 70)  # 70 KB in all
