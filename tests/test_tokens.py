"""The tokens file: creation, atomic replacement, concurrent writers, reload by a running reader."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgproxy.context import RequestContext
from imgproxy.tokens import (
    TokensAuth,
    TokensFileError,
    create_token,
    ensure_admin_token,
    list_tokens,
    read_admin_token,
    read_tokens,
)

ROOT = Path(__file__).resolve().parent.parent


def _auth(a: TokensAuth, token: str | None) -> RequestContext | None:
    return asyncio.run(a.authenticate({"x-auth-token": token} if token is not None else {}))


def test_ensure_admin_token_creates_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    first = ensure_admin_token(path)
    assert first is not None and len(first) == 48
    assert ensure_admin_token(path) is None
    assert read_admin_token(path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entry = json.loads(path.read_text())[first]
    assert entry["project"] == "admin" and entry["roles"] == ["admin"]
    assert entry["created_at"].endswith("Z")


def test_ensure_admin_token_keeps_existing_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    member = create_token(path, project="p1", roles=["member"])
    admin = ensure_admin_token(path)
    assert admin is not None
    assert set(read_tokens(path)) == {member, admin}


def test_create_token_validates(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    with pytest.raises(TokensFileError, match="unknown role"):
        create_token(path, project="p", roles=["owner"])
    with pytest.raises(TokensFileError, match="at least one role"):
        create_token(path, project="p", roles=[])
    with pytest.raises(TokensFileError, match="project"):
        create_token(path, project=" ", roles=["member"])
    assert not path.exists()


def test_read_admin_token_without_admin(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    create_token(path, project="p", roles=["reader"])
    with pytest.raises(LookupError):
        read_admin_token(path)


def test_no_temp_files_left(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    for i in range(5):
        create_token(path, project=f"p{i}", roles=["member"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.json", "tokens.json.lock"]
    assert [e["project"] for _, e in list_tokens(path)] == [f"p{i}" for i in range(5)]


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    """Several processes adding tokens at once (as parallel `imgproxy token create` would)."""
    path = tmp_path / "tokens.json"
    code = (
        "import sys\n"
        "from imgproxy.tokens import create_token\n"
        "for i in range(10):\n"
        "    print(create_token(sys.argv[1], project=sys.argv[2], roles=['member']))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(path), f"proj{n}"], stdout=subprocess.PIPE, env=env)
        for n in range(4)
    ]
    printed: set[str] = set()
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        printed |= set(out.decode().split())
    assert len(printed) == 40
    assert set(read_tokens(path)) == printed


def test_tokens_auth_contexts_and_unknown(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    admin = ensure_admin_token(path)
    reader = create_token(path, project="p2", roles=["reader"])
    auth = TokensAuth(path)
    ctx = _auth(auth, admin)
    assert ctx is not None and ctx.is_admin and ctx.project_id == "admin"
    ctx = _auth(auth, reader)
    assert ctx is not None and ctx.project_id == "p2" and not ctx.can_write
    assert _auth(auth, None) is None
    assert _auth(auth, "") is None
    assert _auth(auth, "nope") is None


def test_tokens_auth_picks_up_new_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    ensure_admin_token(path)
    auth = TokensAuth(path, reload_interval=0.2)
    token = create_token(path, project="late", roles=["member"])
    deadline = time.monotonic() + 2
    ctx = _auth(auth, token)
    while ctx is None and time.monotonic() < deadline:
        time.sleep(0.05)
        ctx = _auth(auth, token)
    assert ctx is not None and ctx.project_id == "late"


def test_tokens_auth_keeps_last_good_set_on_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    admin = ensure_admin_token(path)
    auth = TokensAuth(path, reload_interval=0.0)
    assert _auth(auth, admin) is not None
    path.write_text("{not json")
    assert _auth(auth, admin) is not None


def test_tokens_auth_without_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    auth = TokensAuth(path, reload_interval=0.0)
    assert _auth(auth, "x") is None
    token = create_token(path, project="p", roles=["member"])
    ctx = _auth(auth, token)
    assert ctx is not None and ctx.project_id == "p"


def test_unknown_token_checks_the_file_at_once(tmp_path: Path) -> None:
    """A token created just before a request works on that request, whatever the reload interval."""
    path = tmp_path / "tokens.json"
    admin = ensure_admin_token(path)
    auth = TokensAuth(path, reload_interval=3600)
    assert _auth(auth, admin) is not None
    token = create_token(path, project="now", roles=["member"])
    ctx = _auth(auth, token)
    assert ctx is not None and ctx.project_id == "now"
