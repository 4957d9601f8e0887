"""``auth = "keystone"`` against a real Keystone on loopback: tokens of several projects and
roles through the whole authorization matrix, expired and revoked tokens, Nova's service
tokens, a Keystone that cannot be reached, and one lookup per token however many ask."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from imgproxy.keystone import KeystoneAuth
from imgproxy.settings import SettingsError, load_settings
from tests.keystone_fixtures import KeystoneServer, imgproxy_keystone_config, keystone, new_user  # noqa: F401
from tests.server import ServerProcess, free_port
from tests.test_authz_matrix import Caller, assert_answers_as_glance

OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def service(keystone: KeystoneServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """imgproxy validating with Keystone, default cache (300 s)."""
    proc = ServerProcess(tmp_path_factory.mktemp("ks-imgproxy") / "data", config=imgproxy_keystone_config(keystone))
    with proc:
        yield proc


def _client(service: ServerProcess, token: str, **headers: str) -> httpx.Client:
    return httpx.Client(base_url=service.url, headers={"X-Auth-Token": token, **headers}, timeout=30)


def _login(keystone: KeystoneServer, project: str, roles: list[str]) -> str:
    name, password = new_user(keystone, project, roles)
    return keystone.token(name, password, project)


@pytest.fixture(scope="module")
def project_member(keystone: KeystoneServer) -> tuple[str, str]:
    """``(project name, member token)`` of a fresh project."""
    project = f"ks-p-{uuid.uuid4().hex[:6]}"
    return project, _login(keystone, project, ["member"])


def _image(client: httpx.Client) -> str:
    r = client.post("/v2/images", json={"name": "ks", "disk_format": "raw", "container_format": "bare"})
    assert r.status_code == 201, r.text
    image_id = str(r.json()["id"])
    assert client.put(f"/v2/images/{image_id}/file", content=b"keystone-bytes", headers=OCTET).status_code == 204
    return image_id


def test_keystone_tokens_of_three_projects_and_three_roles_answer_as_glance(
        keystone: KeystoneServer, service: ServerProcess) -> None:
    tag = uuid.uuid4().hex[:6]
    names = {k: f"ks-{k}-{tag}" for k in ("a", "b", "c", "admin")}
    ids = {k: keystone.ensure_project(name) for k, name in names.items()}
    # Keystone expands implied roles into the token (admin -> member -> reader); the matrix's
    # callers carry what the token will carry.
    spec = [("owner-reader", "a", "reader"), ("owner-member", "a", "member"), ("other-reader", "b", "reader"),
            ("other-member", "b", "member"), ("third-member", "c", "member"), ("admin", "admin", "admin")]
    implied = {"reader": {"reader"}, "member": {"reader", "member"}, "admin": {"reader", "member", "admin"}}
    callers, clients = [], {}
    for name, project, role in spec:
        callers.append(Caller(name, ids[project], frozenset(implied[role])))
        clients[name] = _client(service, _login(keystone, names[project], [role]))
    try:
        # What a token carries is what the service sees: the owner is the Keystone project id.
        created = clients["owner-member"].post("/v2/images", json={"name": "mine"})
        assert created.status_code == 201 and created.json()["owner"] == ids["a"]
        assert_answers_as_glance({"owner": ids["a"], "other": ids["b"], "third": ids["c"], "callers": callers,
                                  "clients": clients})
    finally:
        for c in clients.values():
            c.close()


@pytest.mark.parametrize("token", [None, "", "not-a-token", "gAAAAABnot-a-fernet-token" * 4])
def test_a_missing_or_invalid_token_is_401_naming_keystone(
        keystone: KeystoneServer, service: ServerProcess, token: str | None) -> None:
    headers = {} if token is None else {"X-Auth-Token": token}
    r = httpx.get(service.url + "/v2/images", headers=headers, timeout=30)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == f'Keystone uri="{keystone.url}"'
    assert r.json()["error"]["code"] == 401


def test_an_unscoped_token_is_403(keystone: KeystoneServer, service: ServerProcess,
                                  project_member: tuple[str, str]) -> None:
    name, password = new_user(keystone, project_member[0], ["member"])
    r = httpx.get(service.url + "/v2/images", headers={"X-Auth-Token": keystone.token(name, password)}, timeout=30)
    assert r.status_code == 403 and "project-scoped" in r.json()["error"]["message"]


def test_an_expired_token_is_401_although_the_cache_would_keep_it_longer(
        keystone: KeystoneServer, service: ServerProcess, project_member: tuple[str, str], tmp_path: Path) -> None:
    project, member = project_member
    name, password = new_user(keystone, project, ["member"])
    with keystone.sibling(tmp_path / "short", token_expiration=5) as short:
        token = short.token(name, password, project)
    with _client(service, token) as c:
        assert c.get("/v2/images").status_code == 200  # valid now, and cached (300 s)
        time.sleep(max(0.0, keystone.expires_at(token) - time.time()) + 0.5)
        r = c.get("/v2/images")
        assert r.status_code == 401, r.text
        # Nova's service token lets an expired user token finish what it started.
        with _client(service, token, **{"X-Service-Token": _login(keystone, "service", ["service"])}) as nova:
            assert nova.get("/v2/images").status_code == 200


def test_a_revoked_token_stops_working_within_the_cache_time(
        keystone: KeystoneServer, server_factory, project_member: tuple[str, str]) -> None:  # type: ignore[no-untyped-def]
    cache_seconds = 1.0
    proc = server_factory(config=imgproxy_keystone_config(keystone, token_cache_seconds=cache_seconds))
    project, _ = project_member
    token = _login(keystone, project, ["member"])
    with _client(proc, token) as c:
        assert c.get("/v2/images").status_code == 200
        keystone.revoke(token)
        revoked_at = time.monotonic()
        while c.get("/v2/images").status_code == 200:
            assert time.monotonic() - revoked_at < cache_seconds + 10, "the revoked token still works"
            time.sleep(0.1)
        assert c.get("/v2/images").status_code == 401


def test_service_tokens_as_nova_sends_them(keystone: KeystoneServer, service: ServerProcess,
                                           project_member: tuple[str, str]) -> None:
    project, member = project_member
    nova = _login(keystone, "service", ["service"])
    with _client(service, member) as c:
        image_id = _image(c)
        path = f"/v2/images/{image_id}/locations"
        assert c.get(path).status_code == 403  # Glance's fetch_image_location: service or admin
        # The service token's roles are not the caller's: Glance's policies read the user's roles
        # only (measured against Glance in tests/test_locations_policy.py).
        assert c.get(path, headers={"X-Service-Token": nova}).status_code == 403
        # A valid token without the service role is no service token: it adds nothing.
        other = _login(keystone, project, ["member"])
        assert c.get(path, headers={"X-Service-Token": other}).status_code == 403
        # An invalid service token refuses the request, as keystonemiddleware does.
        bad = c.get(path, headers={"X-Service-Token": "not-a-token"})
        assert bad.status_code == 401 and bad.headers["www-authenticate"] == f'Keystone uri="{keystone.url}"'
        # With a service token the caller is still the user, who may delete its own image.
        assert c.delete(f"/v2/images/{image_id}", headers={"X-Service-Token": nova}).status_code == 204


def test_an_unreachable_keystone_is_503(server_factory) -> None:  # type: ignore[no-untyped-def]
    url = f"http://127.0.0.1:{free_port()}"
    proc = server_factory(config={"auth": "keystone", "keystone_url": url, "keystone_user": "imgproxy",
                                  "keystone_password": "pw", "keystone_timeout": 2})
    r = httpx.get(proc.url + "/v2/images", headers={"X-Auth-Token": "some-token"}, timeout=30)
    assert r.status_code == 503
    assert r.json()["error"]["message"] == "The Keystone service is temporarily unavailable."
    assert "pw" not in r.text
    assert httpx.get(proc.url + "/versions", timeout=30).status_code == 200  # not behind Keystone


async def test_one_lookup_per_token_however_many_ask(keystone: KeystoneServer,
                                                     project_member: tuple[str, str]) -> None:
    settings = load_settings(environ={}, overrides=imgproxy_keystone_config(keystone))
    auth = KeystoneAuth.from_settings(settings)
    token = project_member[1]
    try:
        contexts = await asyncio.gather(*(auth.authenticate({"x-auth-token": token}) for _ in range(20)))
        assert {c.project_id for c in contexts if c} == {keystone.ensure_project(project_member[0])}
        assert all(c is not None and c.roles == {"reader", "member"} for c in contexts)
        assert auth.lookups == 1
        assert await auth.authenticate({"x-auth-token": "no-such-token"}) is None
        assert await auth.authenticate({"x-auth-token": "no-such-token"}) is None
        assert auth.lookups == 2  # a refused token is remembered too
    finally:
        await auth.aclose()


async def test_a_token_is_known_at_once_only_once_keystone_said_it_is_valid(
        keystone: KeystoneServer, project_member: tuple[str, str]) -> None:
    # What the protocol's image show relies on (imgproxy.shortcut): no I/O, no lookup.
    settings = load_settings(environ={}, overrides=imgproxy_keystone_config(keystone))
    auth = KeystoneAuth.from_settings(settings)
    headers = {"x-auth-token": project_member[1]}
    try:
        assert auth.authenticate_now(headers) is None and auth.lookups == 0
        looked_up = await auth.authenticate(headers)
        assert looked_up is not None and auth.authenticate_now(headers) == looked_up and auth.lookups == 1
        assert await auth.authenticate({"x-auth-token": "no-such-token"}) is None
        assert auth.authenticate_now({"x-auth-token": "no-such-token"}) is None  # the app answers 401
        assert auth.authenticate_now({}) is None and auth.lookups == 2
    finally:
        await auth.aclose()


def test_image_show_with_a_revoked_token_stops_working_within_the_cache_time(
        keystone: KeystoneServer, server_factory: Callable[..., ServerProcess], project_member: tuple[str, str]) -> None:
    # Shows of a known token are answered from the token cache without the app: its deadline holds there too.
    cache_seconds = 1.0
    proc = server_factory(config=imgproxy_keystone_config(keystone, token_cache_seconds=cache_seconds))
    token = _login(keystone, project_member[0], ["member"])
    with _client(proc, token) as c:
        image_id = c.post("/v2/images", json={"name": "ks-show"}).json()["id"]
        assert c.get(f"/v2/images/{image_id}").status_code == 200
        keystone.revoke(token)
        revoked_at = time.monotonic()
        while (r := c.get(f"/v2/images/{image_id}")).status_code == 200:
            assert r.json()["id"] == image_id
            assert time.monotonic() - revoked_at < cache_seconds + 10, "the revoked token still works"
            time.sleep(0.1)
        assert r.status_code == 401 and r.headers["www-authenticate"] == f'Keystone uri="{keystone.url}"'


@pytest.mark.parametrize(("overrides", "key"), [
    ({}, "keystone_url"),
    ({"keystone_url": "keystone:5000"}, "keystone_url"),
    ({"keystone_url": "http://ks:5000"}, "keystone_user"),
    ({"keystone_url": "http://ks:5000", "keystone_user": "u"}, "keystone_password"),
    ({"keystone_url": "http://ks:5000", "keystone_app_credential_id": "id"}, "keystone_app_credential_secret"),
    ({"keystone_url": "http://ks:5000", "keystone_user": "u", "keystone_password": "p",
      "keystone_app_credential_id": "i", "keystone_app_credential_secret": "s"}, "keystone_user"),
    ({"keystone_url": "http://ks:5000", "keystone_user": "u", "keystone_password": "p",
      "token_cache_seconds": -1}, "token_cache_seconds"),
])
def test_keystone_settings_name_the_bad_key(overrides: dict[str, object], key: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(environ={}, overrides={"auth": "keystone", **overrides})
    assert info.value.key == key


def test_the_password_is_not_in_the_settings_repr() -> None:
    s = load_settings(environ={}, overrides={"auth": "keystone", "keystone_url": "http://ks:5000",
                                             "keystone_user": "u", "keystone_password": "hunter2-secret"})
    assert "hunter2-secret" not in repr(s)
