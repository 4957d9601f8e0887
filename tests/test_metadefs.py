"""The metadata definitions API over HTTP against a real ``imgproxy serve``, and against the real
Glance 33 for the schema documents and a namespace round trip.

Deviations from Glance, each asserted below where it shows:
- the objects list's ``schema`` link is ``/v2/schemas/metadefs/objects`` (Glance: the relative
  ``v2/schemas/metadefs/objects``);
- ``limit=abc``, an unknown ``sort_key`` and a JSON array body are 400 (Glance: 500);
- a name Glance stores but cannot address (``""``, ``"a/b"``) is 400 (Glance: 201);
- create answers the stored namespace (nested items with their ``created_at``), where Glance
  echoes the request's items;
- a property definition keeps its JSON values: Glance turns ``default`` into a Python ``str()``
  (``true`` -> ``"True"``, an object -> ``null``), cuts ``minimum``/``maximum`` to integers and
  answers 500 for an ``enum`` of numbers (see ``test_property_values_keep_their_json_types``).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.systems.glance import GlanceSystem
from tests.metadefs_fixtures import glance_definitions, glance_metadefs_dir, unique
from tests.requirements import require_glance_venv
from tests.server import ServerProcess

NS = "/v2/metadefs/namespaces"
SCHEMA_NAMES = ("namespace", "namespaces", "object", "objects", "property", "properties", "tag", "tags",
                "resource_type", "resource_types")


def full_namespace(name: str, rtype: str) -> dict[str, Any]:
    return {
        "namespace": name,
        "display_name": "Round trip",
        "description": "every part of a namespace",
        "visibility": "public",
        "protected": True,
        "owner": "team-a",
        "resource_type_associations": [{"name": rtype, "prefix": "hw_", "properties_target": "image"}],
        "properties": {
            "cores": {"type": "integer", "title": "Cores", "minimum": 1, "maximum": 64},
            "mode": {"type": "string", "title": "Mode", "enum": ["fast", "safe"], "default": "fast", "readonly": True},
        },
        "objects": [{
            "name": "Limits", "description": "limits", "required": ["cpu"],
            "properties": {"cpu": {"type": "string", "title": "CPU", "enum": ["a", "b"]}},
        }],
        "tags": [{"name": "one"}, {"name": "two"}],
    }


def without_times(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: ("<time>" if k in ("created_at", "updated_at") else without_times(v)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [without_times(v) for v in doc]
    return doc


def error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    message: str = r.json()["error"]["message"]
    assert message
    return message


@pytest.fixture(scope="module")
def glance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """The real Glance (no Keystone: every caller is its admin), stopped by PID at the end."""
    require_glance_venv()
    system = GlanceSystem(tmp_path_factory.mktemp("glance"), processes=1).start()
    try:
        with httpx.Client(base_url=system.url, headers=system.headers, timeout=30) as client:
            yield client
    finally:
        system.stop()


@pytest.fixture
def private_ns(admin: httpx.Client) -> str:
    """A private namespace owned by project ``team-a`` (created by the admin)."""
    name = unique()
    r = admin.post(NS, json={"namespace": name, "owner": "team-a", "visibility": "private"})
    assert r.status_code == 201, r.text
    return name


# ---- against the real Glance ---------------------------------------------------------------------

@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_documents_are_glances(glance: httpx.Client, admin: httpx.Client, name: str) -> None:
    ours = admin.get(f"/v2/schemas/metadefs/{name}")
    theirs = glance.get(f"/v2/schemas/metadefs/{name}")
    assert ours.status_code == theirs.status_code == 200
    assert ours.json() == theirs.json()


def test_namespace_round_trip_matches_glance(glance: httpx.Client, admin: httpx.Client) -> None:
    name, rtype = unique("rt"), unique("OS::Test::Type")
    body = full_namespace(name, rtype)
    answers = {}
    for who, client in (("glance", glance), ("imgproxy", admin)):
        created = client.post(NS, json=body)
        assert created.status_code == 201, (who, created.text)
        assert created.headers["location"].endswith(f"{NS}/{name}")
        answers[who] = {
            "show": client.get(f"{NS}/{name}").json(),
            "show_prefixed": client.get(f"{NS}/{name}", params={"resource_type": rtype}).json(),
            "list": client.get(NS, params={"resource_types": rtype}).json(),
            "objects": client.get(f"{NS}/{name}/objects").json(),
            "object": client.get(f"{NS}/{name}/objects/Limits").json(),
            "properties": client.get(f"{NS}/{name}/properties").json(),
            "property": client.get(f"{NS}/{name}/properties/cores").json(),
            "property_prefixed": client.get(f"{NS}/{name}/properties/hw_cores", params={"resource_type": rtype}).json(),
            "tags": client.get(f"{NS}/{name}/tags").json(),
            "tag": client.get(f"{NS}/{name}/tags/one").json(),
            "associations": client.get(f"{NS}/{name}/resource_types").json(),
            "duplicate": client.post(NS, json={"namespace": name, "owner": "x"}).status_code,
            "protected_delete": client.delete(f"{NS}/{name}").status_code,
            "unprotect": client.put(f"{NS}/{name}", json={"namespace": name, "owner": "team-a", "visibility": "public"}).status_code,
            "delete": client.delete(f"{NS}/{name}").status_code,
            "gone": client.get(f"{NS}/{name}").status_code,
        }
    ours, theirs = without_times(answers["imgproxy"]), without_times(answers["glance"])
    # Deviation: Glance's objects list links its schema relative to nothing.
    assert theirs["objects"]["schema"] == "v2/schemas/metadefs/objects"
    assert ours["objects"]["schema"] == "/v2/schemas/metadefs/objects"
    ours["objects"]["schema"] = theirs["objects"]["schema"]
    assert ours == theirs
    assert ours["duplicate"] == 409 and ours["protected_delete"] == 403 and ours["gone"] == 404


def test_item_errors_match_glance(glance: httpx.Client, admin: httpx.Client) -> None:
    name = unique()
    statuses: dict[str, list[int]] = {}
    for who, client in (("glance", glance), ("imgproxy", admin)):
        assert client.post(NS, json={"namespace": name, "owner": "team-a"}).status_code == 201
        calls = [
            client.post(f"{NS}/{name}/objects", json={"name": "o"}),
            client.post(f"{NS}/{name}/objects", json={"name": "o"}),
            client.post(f"{NS}/{name}/objects", json={"name": "p", "properties": {"x": {"type": "string"}}}),
            client.post(f"{NS}/{name}/objects", json={"name": "q", "self": "x"}),
            client.put(f"{NS}/{name}/objects/nope", json={"name": "z"}),
            client.post(f"{NS}/{name}/properties", json={"title": "T", "type": "string"}),
            client.post(f"{NS}/{name}/properties", json={"name": "p", "title": "T", "type": "bogus"}),
            client.post(f"{NS}/{name}/properties", json={"name": "p", "title": "T", "type": "string", "x": 1}),
            client.post(f"{NS}/{name}/tags/t"),
            client.post(f"{NS}/{name}/tags/t"),
            client.post(f"{NS}/{name}/tags", json={"tags": [{"name": "u"}, {"name": "u"}]}),
            client.post(f"{NS}/{name}/tags", json={"tags": [{"name": "u", "x": 1}]}),
            client.get(f"{NS}/{name}/tags/nope"),
            client.post(f"{NS}/{name}/resource_types", json={"name": "R", "bogus": 1}),
            client.delete(f"{NS}/{name}/resource_types/R"),
            client.put(f"{NS}/{name}/resource_types/R", json={"name": "R"}),
            client.get(NS, params={"sort_dir": "up"}),
            client.get(NS, params={"limit": "-1"}),
            client.get(NS, params={"visibility": "shared"}),
            client.get(NS, params={"marker": unique()}),
            client.delete(f"{NS}/{name}"),
        ]
        statuses[who] = [r.status_code for r in calls]
    assert statuses["imgproxy"] == statuses["glance"]


def test_property_values_keep_their_json_types(glance: httpx.Client, admin: httpx.Client) -> None:
    name = unique()
    typed = {"type": "number", "title": "N", "default": 2.5, "minimum": 1.5}
    answers = {}
    for who, client in (("glance", glance), ("imgproxy", admin)):
        assert client.post(NS, json={"namespace": name, "owner": "team-a", "properties": {"n": typed}}).status_code == 201
        answers[who] = client.get(f"{NS}/{name}/properties/n").json()
        answers[who + "-enum"] = client.post(f"{NS}/{name}/properties", json={"name": "e", "title": "E", "type": "integer", "enum": [1, 2]}).status_code
    assert answers["glance"] == {"name": "n", "type": "number", "title": "N", "default": "2.5", "minimum": 1}
    assert answers["glance-enum"] == 500
    assert answers["imgproxy"] == {"name": "n", **typed}  # deviation: the values as given
    assert answers["imgproxy-enum"] == 201


# ---- namespaces ----------------------------------------------------------------------------------

def test_create_show_update_rename_delete(admin: httpx.Client) -> None:
    name, renamed = unique(), unique()
    r = admin.post(NS, json={"namespace": name, "display_name": "D", "description": "about"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["owner"] == "admin"  # the caller's project when the body names none
    assert created["visibility"] == "private" and created["protected"] is False
    assert created["self"] == f"{NS}/{name}" and created["schema"] == "/v2/schemas/metadefs/namespace"
    assert admin.post(f"{NS}/{name}/objects", json={"name": "o"}).status_code == 201
    assert admin.post(f"{NS}/{name}/tags/t").status_code == 201

    r = admin.put(f"{NS}/{name}", json={"namespace": renamed, "visibility": "public", "owner": "team-b"})
    assert r.status_code == 200, r.text
    updated = r.json()
    assert updated["namespace"] == renamed and updated["visibility"] == "public" and updated["owner"] == "team-b"
    assert "display_name" not in updated and "description" not in updated  # PUT replaces: left out is cleared
    assert updated["created_at"] == created["created_at"]
    assert admin.get(f"{NS}/{name}").status_code == 404
    shown = admin.get(f"{NS}/{renamed}").json()
    assert [o["name"] for o in shown["objects"]] == ["o"] and shown["tags"] == [{"name": "t"}]
    assert admin.get(f"{NS}/{renamed}/objects/o").json()["self"] == f"{NS}/{renamed}/objects/o"

    assert admin.delete(f"{NS}/{renamed}").status_code == 204
    assert admin.get(f"{NS}/{renamed}").status_code == 404
    assert admin.get(f"{NS}/{renamed}/objects/o").status_code == 404
    assert admin.post(NS, json={"namespace": renamed}).json().get("objects") is None  # nothing left behind


def test_duplicates_are_409_and_leave_nothing(admin: httpx.Client) -> None:
    name, other = unique(), unique()
    assert admin.post(NS, json={"namespace": name}).status_code == 201
    error(admin.post(NS, json={"namespace": name}), 409)
    error(admin.post(NS, json={"namespace": other, "objects": [{"name": "a"}, {"name": "a"}]}), 409)
    assert admin.get(f"{NS}/{other}").status_code == 404  # all or nothing
    assert admin.post(NS, json={"namespace": other}).status_code == 201
    error(admin.put(f"{NS}/{other}", json={"namespace": name}), 409)
    assert admin.get(f"{NS}/{other}").status_code == 200


def test_concurrent_creates_of_one_name_one_wins(admin: httpx.Client, server: ServerProcess) -> None:
    name = unique()
    statuses: list[int] = []

    def create() -> None:
        with httpx.Client(base_url=server.url, headers=admin.headers, timeout=30) as c:
            statuses.append(c.post(NS, json={"namespace": name, "objects": [{"name": "o"}]}).status_code)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [201, 409, 409, 409, 409, 409]
    assert len(admin.get(f"{NS}/{name}/objects").json()["objects"]) == 1


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ([{"namespace": "x"}], 400),  # Glance: 500
        ({"display_name": "no name"}, 400),
        ({"namespace": ""}, 400),  # Glance stores it, then cannot address it
        ({"namespace": "a/b"}, 400),  # likewise
        ({"namespace": "x" * 81}, 400),
        ({"namespace": "n", "visibility": "shared"}, 400),
        ({"namespace": "n", "protected": "yes"}, 400),
        ({"namespace": "n", "bogus": 1}, 400),
        ({"namespace": "n", "properties": {"p": {"type": "string", "title": "P", "bogus": 1}}}, 400),
        ({"namespace": "n", "properties": {"p": {"type": "string"}}}, 400),
        ({"namespace": "n", "self": "/x"}, 403),
        ({"namespace": "n", "created_at": "2020-01-01T00:00:00Z"}, 403),
    ],
)
def test_bad_namespace_bodies(admin: httpx.Client, body: Any, status: int) -> None:
    if isinstance(body, dict) and body.get("namespace") == "n":
        body = {**body, "namespace": unique()}
    error(admin.post(NS, json=body), status)


def test_malformed_and_oversized_bodies(admin: httpx.Client) -> None:
    headers = {"Content-Type": "application/json"}
    error(admin.post(NS, content=b"{not json", headers=headers), 400)
    error(admin.post(NS, content=b"", headers=headers), 400)
    error(admin.post(NS, json={"namespace": unique(), "description": "x" * (70 * 1024)}), 413)


# ---- visibility, admin-only writes, protected ------------------------------------------------------

def test_private_namespace_only_for_its_project(private_ns: str, client_for: Callable[..., httpx.Client]) -> None:
    own, other = client_for("team-a", "reader"), client_for("team-z", "member")
    assert own.get(f"{NS}/{private_ns}").status_code == 200
    assert private_ns in [n["namespace"] for n in own.get(NS, params={"limit": "1000"}).json()["namespaces"]]
    assert own.get(f"{NS}/{private_ns}/objects").status_code == 200
    for r in (
        other.get(f"{NS}/{private_ns}"),
        other.get(f"{NS}/{private_ns}/objects"),
        other.get(f"{NS}/{private_ns}/tags"),
        other.get(f"{NS}/{private_ns}/properties/p"),
        other.get(f"{NS}/{private_ns}/resource_types"),
        other.post(f"{NS}/{private_ns}/tags/t"),  # a hidden namespace is 404 for writes too
        other.delete(f"{NS}/{private_ns}"),
        other.get(NS, params={"marker": private_ns}),
    ):
        error(r, 404)
    assert private_ns not in [n["namespace"] for n in other.get(NS, params={"limit": "1000"}).json()["namespaces"]]


def test_writes_are_admin_only(private_ns: str, admin: httpx.Client, client_for: Callable[..., httpx.Client]) -> None:
    member = client_for("team-a", "member")  # of the owning project: sees it, may not change it
    assert admin.post(f"{NS}/{private_ns}/objects", json={"name": "o"}).status_code == 201
    assert admin.post(f"{NS}/{private_ns}/tags/t").status_code == 201
    for r in (
        member.post(NS, json={"namespace": unique()}),
        member.put(f"{NS}/{private_ns}", json={"namespace": private_ns}),
        member.delete(f"{NS}/{private_ns}"),
        member.post(f"{NS}/{private_ns}/objects", json={"name": "p"}),
        member.put(f"{NS}/{private_ns}/objects/o", json={"name": "o", "description": "x"}),
        member.delete(f"{NS}/{private_ns}/objects/o"),
        member.delete(f"{NS}/{private_ns}/objects"),
        member.post(f"{NS}/{private_ns}/properties", json={"name": "p", "title": "P", "type": "string"}),
        member.post(f"{NS}/{private_ns}/tags/u"),
        member.post(f"{NS}/{private_ns}/tags", json={"tags": [{"name": "v"}]}),
        member.put(f"{NS}/{private_ns}/tags/t", json={"name": "w"}),
        member.delete(f"{NS}/{private_ns}/tags"),
        member.post(f"{NS}/{private_ns}/resource_types", json={"name": "OS::Glance::Image"}),
    ):
        error(r, 403)
    shown = admin.get(f"{NS}/{private_ns}").json()
    assert [o["name"] for o in shown["objects"]] == ["o"] and "description" not in shown["objects"][0]
    assert shown["tags"] == [{"name": "t"}] and "properties" not in shown and "resource_type_associations" not in shown
    assert member.get("/v2/metadefs/resource_types").status_code == 200


def test_public_namespace_readable_by_all(admin: httpx.Client, client_for: Callable[..., httpx.Client]) -> None:
    name = unique()
    assert admin.post(NS, json={"namespace": name, "visibility": "public", "owner": "team-a"}).status_code == 201
    reader = client_for("team-q", "reader")
    assert reader.get(f"{NS}/{name}").json()["visibility"] == "public"
    error(reader.delete(f"{NS}/{name}"), 403)  # visible, so 403 rather than 404


def test_protected_namespace_keeps_everything(admin: httpx.Client) -> None:
    name, rtype = unique(), unique("OS::Prot")
    assert admin.post(NS, json=full_namespace(name, rtype)).status_code == 201
    for path in (f"{NS}/{name}", f"{NS}/{name}/objects", f"{NS}/{name}/objects/Limits", f"{NS}/{name}/properties",
                 f"{NS}/{name}/properties/cores", f"{NS}/{name}/tags", f"{NS}/{name}/tags/one",
                 f"{NS}/{name}/resource_types/{rtype}"):
        assert "protected" in error(admin.delete(path), 403)
    shown = admin.get(f"{NS}/{name}").json()
    assert len(shown["objects"]) == 1 and len(shown["tags"]) == 2 and "cores" in shown["properties"]
    assert admin.put(f"{NS}/{name}/tags/one", json={"name": "uno"}).status_code == 200  # updates are allowed
    assert admin.put(f"{NS}/{name}", json={"namespace": name, "protected": False}).status_code == 200
    for path in (f"{NS}/{name}/objects", f"{NS}/{name}/properties", f"{NS}/{name}/tags"):
        assert admin.delete(path).status_code == 204
    shown = admin.get(f"{NS}/{name}").json()
    assert not {"objects", "properties", "tags"} & set(shown) and len(shown["resource_type_associations"]) == 1
    assert admin.delete(f"{NS}/{name}").status_code == 204


# ---- objects, properties, tags, resource types ---------------------------------------------------

def test_objects(admin: httpx.Client) -> None:
    name = unique()
    assert admin.post(NS, json={"namespace": name}).status_code == 201
    prop = {"type": "integer", "title": "Size", "minimum": 1}
    r = admin.post(f"{NS}/{name}/objects", json={"name": "A", "required": ["size"], "properties": {"size": prop}})
    assert r.status_code == 201, r.text
    assert r.json()["self"] == f"{NS}/{name}/objects/A" and r.json()["properties"] == {"size": prop}
    assert admin.post(f"{NS}/{name}/objects", json={"name": "B"}).status_code == 201
    error(admin.post(f"{NS}/{name}/objects", json={"name": "A"}), 409)
    listed = admin.get(f"{NS}/{name}/objects").json()
    assert [o["name"] for o in listed["objects"]] == ["B", "A"]  # newest first, as Glance
    assert [o["name"] for o in admin.get(f"{NS}/{name}/objects", params={"sort_key": "name", "sort_dir": "asc"}).json()["objects"]] == ["A", "B"]

    r = admin.put(f"{NS}/{name}/objects/A", json={"name": "C", "description": "renamed"})
    assert r.status_code == 200 and r.json()["name"] == "C" and "properties" not in r.json()
    error(admin.put(f"{NS}/{name}/objects/C", json={"name": "B"}), 409)
    error(admin.put(f"{NS}/{name}/objects/A", json={"name": "D"}), 404)
    error(admin.put(f"{NS}/{name}/objects/C", json={"name": "C", "created_at": "x"}), 403)
    error(admin.post(f"{NS}/{name}/objects", json={"name": "E", "properties": {"p": {"type": "string", "title": "P", "x": 1}}}), 400)
    error(admin.post(f"{NS}/{name}/objects", json={"name": "E", "required": "size"}), 400)
    assert admin.delete(f"{NS}/{name}/objects/C").status_code == 204
    error(admin.delete(f"{NS}/{name}/objects/C"), 404)
    error(admin.get(f"{NS}/{name}/objects/C"), 404)
    error(admin.get(f"{NS}/{unique()}/objects"), 404)


def test_properties(admin: httpx.Client) -> None:
    name = unique()
    assert admin.post(NS, json={"namespace": name}).status_code == 201
    body = {"name": "hw_disk", "title": "Disk", "type": "string", "enum": ["ide", "virtio"], "default": "virtio"}
    r = admin.post(f"{NS}/{name}/properties", json=body)
    assert r.status_code == 201 and r.json() == body
    error(admin.post(f"{NS}/{name}/properties", json=body), 409)
    assert admin.get(f"{NS}/{name}/properties/hw_disk").json() == body
    listed = admin.get(f"{NS}/{name}/properties").json()
    assert listed == {"properties": {"hw_disk": {k: v for k, v in body.items() if k != "name"}}}

    arr = {"name": "ports", "title": "Ports", "type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    assert admin.post(f"{NS}/{name}/properties", json=arr).status_code == 201
    error(admin.put(f"{NS}/{name}/properties/ports", json={**arr, "name": "hw_disk"}), 409)
    r = admin.put(f"{NS}/{name}/properties/ports", json={**arr, "name": "nics", "title": "NICs"})
    assert r.status_code == 200 and r.json()["name"] == "nics"
    assert list(admin.get(f"{NS}/{name}/properties").json()["properties"]) == ["hw_disk", "nics"]
    for bad in ({**body, "name": "x", "type": "text"}, {**body, "name": "x", "confidential": True},
                {"name": "x", "type": "string"}, {**body, "name": "x", "minLength": -1}):
        error(admin.post(f"{NS}/{name}/properties", json=bad), 400)
    assert admin.delete(f"{NS}/{name}/properties/nics").status_code == 204
    error(admin.get(f"{NS}/{name}/properties/nics"), 404)


def test_property_names_with_a_resource_type_prefix(admin: httpx.Client) -> None:
    name, rtype = unique(), unique("OS::Prefix")
    assert admin.post(NS, json=full_namespace(name, rtype) | {"protected": False}).status_code == 201
    assert admin.get(f"{NS}/{name}/properties/hw_cores", params={"resource_type": rtype}).json()["name"] == "cores"
    error(admin.get(f"{NS}/{name}/properties/cores", params={"resource_type": rtype}), 404)
    error(admin.get(f"{NS}/{name}/properties/hw_cores", params={"resource_type": "OS::Unknown"}), 404)
    shown = admin.get(f"{NS}/{name}", params={"resource_type": rtype}).json()
    assert list(shown["properties"]) == ["hw_cores", "hw_mode"]
    assert shown["objects"][0]["required"] == ["hw_cpu"] and list(shown["objects"][0]["properties"]) == ["hw_cpu"]
    assert list(admin.get(f"{NS}/{name}", params={"resource_type": "OS::Other"}).json()["properties"]) == ["cores", "mode"]


def test_tags(admin: httpx.Client) -> None:
    name = unique()
    assert admin.post(NS, json={"namespace": name}).status_code == 201
    r = admin.post(f"{NS}/{name}/tags/alpha")
    assert r.status_code == 201 and r.json()["name"] == "alpha" and "created_at" in r.json()
    error(admin.post(f"{NS}/{name}/tags/alpha"), 409)
    error(admin.post(f"{NS}/{name}/tags/{'x' * 81}"), 400)

    def names() -> list[str]:
        return [t["name"] for t in admin.get(f"{NS}/{name}/tags").json()["tags"]]

    # Without X-Openstack-Append the list replaces the namespace's tags.
    r = admin.post(f"{NS}/{name}/tags", json={"tags": [{"name": "b1"}, {"name": "b2"}]})
    assert r.status_code == 201 and r.json() == {"tags": [{"name": "b1"}, {"name": "b2"}]}
    assert names() == ["b2", "b1"]
    r = admin.post(f"{NS}/{name}/tags", json={"tags": [{"name": "c1"}]}, headers={"X-Openstack-Append": "True"})
    assert r.status_code == 201 and names() == ["c1", "b2", "b1"]
    # All or nothing: a name twice, or (appending) one that exists, changes nothing.
    error(admin.post(f"{NS}/{name}/tags", json={"tags": [{"name": "d1"}, {"name": "d1"}]}), 409)
    error(admin.post(f"{NS}/{name}/tags", json={"tags": [{"name": "d2"}, {"name": "b1"}]}, headers={"X-Openstack-Append": "yes"}), 409)
    assert names() == ["c1", "b2", "b1"]
    assert admin.post(f"{NS}/{name}/tags", json={"tags": []}).status_code == 201 and names() == ["c1", "b2", "b1"]
    error(admin.post(f"{NS}/{name}/tags", json={"tags": [{"name": "e", "x": 1}]}), 400)
    error(admin.post(f"{NS}/{name}/tags", json={"tags": "e"}), 400)

    assert admin.get(f"{NS}/{name}/tags", params={"limit": "2", "sort_key": "name", "sort_dir": "asc"}).json() == {
        "tags": [{"name": "b1"}, {"name": "b2"}]}
    assert admin.get(f"{NS}/{name}/tags", params={"marker": "b2", "sort_key": "name", "sort_dir": "asc"}).json() == {
        "tags": [{"name": "c1"}]}
    r = admin.put(f"{NS}/{name}/tags/c1", json={"name": "c2"})
    assert r.status_code == 200 and r.json()["name"] == "c2"
    error(admin.put(f"{NS}/{name}/tags/c2", json={"name": "b1"}), 409)
    error(admin.get(f"{NS}/{name}/tags/c1"), 404)
    assert admin.delete(f"{NS}/{name}/tags/c2").status_code == 204
    assert admin.delete(f"{NS}/{name}/tags").status_code == 204 and names() == []


def test_resource_types_and_associations(admin: httpx.Client, client_for: Callable[..., httpx.Client]) -> None:
    name, rtype = unique(), unique("OS::Assoc")
    assert admin.post(NS, json={"namespace": name}).status_code == 201
    r = admin.post(f"{NS}/{name}/resource_types", json={"name": rtype, "prefix": "a:", "properties_target": "image"})
    assert r.status_code == 201, r.text
    assert {k: r.json()[k] for k in ("name", "prefix", "properties_target")} == {"name": rtype, "prefix": "a:", "properties_target": "image"}
    error(admin.post(f"{NS}/{name}/resource_types", json={"name": rtype, "prefix": "b:"}), 409)
    error(admin.post(f"{NS}/{name}/resource_types", json={"prefix": "b:"}), 400)
    listed = admin.get(f"{NS}/{name}/resource_types").json()["resource_type_associations"]
    assert [(a["name"], a["prefix"]) for a in listed] == [(rtype, "a:")]
    reader = client_for("team-r", "reader")
    types = reader.get("/v2/metadefs/resource_types").json()["resource_types"]
    assert rtype in [t["name"] for t in types] and set(types[0]) == {"name", "created_at", "updated_at"}
    assert admin.delete(f"{NS}/{name}/resource_types/{rtype}").status_code == 204
    error(admin.delete(f"{NS}/{name}/resource_types/{rtype}"), 404)
    assert admin.get(f"{NS}/{name}/resource_types").json() == {"resource_type_associations": []}
    assert rtype in [t["name"] for t in admin.get("/v2/metadefs/resource_types").json()["resource_types"]]


def test_unknown_schema_and_method(admin: httpx.Client) -> None:
    error(admin.get("/v2/schemas/metadefs/bogus"), 404)
    error(admin.patch(NS), 405)


# ---- listing on a server of its own ----------------------------------------------------------------

@pytest.fixture
def fresh(server_factory: Callable[..., ServerProcess]) -> Iterator[tuple[ServerProcess, httpx.Client]]:
    srv = server_factory()
    with httpx.Client(base_url=srv.url, headers={"X-Auth-Token": srv.admin_token}, timeout=30) as client:
        yield srv, client


def names_of(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [n["namespace"] for n in answer.json()["namespaces"]]


def test_namespace_list_filters_sorting_and_paging(fresh: tuple[ServerProcess, httpx.Client]) -> None:
    srv, admin = fresh
    specs = [("n1", "public", "R1"), ("n2", "private", None), ("n3", "public", "R2"), ("n4", "private", "R1"), ("n5", "public", None)]
    for name, visibility, rtype in specs:
        body: dict[str, Any] = {"namespace": name, "visibility": visibility, "owner": "team-a"}
        if rtype:
            body["resource_type_associations"] = [{"name": rtype}]
        assert admin.post(NS, json=body).status_code == 201
    assert names_of(admin.get(NS)) == ["n5", "n4", "n3", "n2", "n1"]  # created_at desc

    # Paging by the next links, with the other parameters kept.
    seen, url, pages = [], f"{NS}?limit=2&sort_key=namespace&sort_dir=asc", 0
    while url:
        r = admin.get(url)
        seen += names_of(r)
        assert r.json()["first"] == f"{NS}?limit=2&sort_key=namespace&sort_dir=asc"
        url, pages = r.json().get("next", ""), pages + 1
    assert seen == ["n1", "n2", "n3", "n4", "n5"] and pages == 3
    assert names_of(admin.get(NS, params={"limit": "2", "marker": "n4"})) == ["n3", "n2"]
    assert names_of(admin.get(NS, params={"limit": "0"})) == []

    assert names_of(admin.get(NS, params={"visibility": "private"})) == ["n4", "n2"]
    assert names_of(admin.get(NS, params={"resource_types": "R1"})) == ["n4", "n1"]
    assert names_of(admin.get(NS, params={"resource_types": "R1,R2", "visibility": "public"})) == ["n3", "n1"]
    listed = admin.get(NS, params={"resource_types": "R2"}).json()["namespaces"][0]
    assert [a["name"] for a in listed["resource_type_associations"]] == ["R2"]
    # The marker may be filtered out of the page it starts: its position still counts.
    assert names_of(admin.get(NS, params={"visibility": "public", "marker": "n4"})) == ["n3", "n1"]

    for params in ({"limit": "abc"}, {"limit": "-1"}, {"sort_key": "bogus"}, {"sort_dir": "up"}, {"visibility": "shared"}):
        error(admin.get(NS, params=params), 400)
    error(admin.get(NS, params={"marker": "missing"}), 404)

    from imgproxy.tokens import create_token

    other = httpx.Client(base_url=srv.url, headers={"X-Auth-Token": create_token(srv.data_dir / "tokens.json", project="team-b", roles=["reader"])})
    with other:
        deadline = time.monotonic() + 10  # the server re-reads the tokens file when it changes
        while (r := other.get(NS)).status_code == 401 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert names_of(r) == ["n5", "n3", "n1"]
        error(other.get(NS, params={"marker": "n2"}), 404)


def test_default_page_is_25_with_a_next_link(fresh: tuple[ServerProcess, httpx.Client]) -> None:
    _, admin = fresh
    for i in range(27):
        assert admin.post(NS, json={"namespace": f"p{i:02d}"}).status_code == 201
    first = admin.get(NS).json()
    assert len(first["namespaces"]) == 25 and first["next"] == f"{NS}?marker=p02"
    assert names_of(admin.get(first["next"])) == ["p01", "p00"]


# ---- imgproxy metadefs load -------------------------------------------------------------------------

def load(srv: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imgproxy", "metadefs", "load", *args, "--data-dir", str(srv.data_dir)],
        capture_output=True, text=True, timeout=120,
    )


def test_load_glances_definitions_next_to_a_running_server(fresh: tuple[ServerProcess, httpx.Client]) -> None:
    srv, admin = fresh
    files = glance_definitions()
    done = load(srv, str(glance_metadefs_dir()))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(" created\n") == len(files) and len(files) >= 30

    assert sorted(names_of(admin.get(NS, params={"limit": "1000"}))) == sorted(files)
    for name, doc in files.items():
        shown = admin.get(f"{NS}/{name}").json()
        assert shown["owner"] == "admin" and shown["visibility"] == doc.get("visibility", "private")
        assert shown["protected"] == doc.get("protected", False) and shown["display_name"] == doc["display_name"]
        assert shown.get("properties", {}) == doc.get("properties", {}), name
        objects = {o["name"]: o for o in shown.get("objects", [])}
        assert set(objects) == {o["name"] for o in doc.get("objects", [])}
        for obj in doc.get("objects", []):
            assert objects[obj["name"]].get("properties") == obj.get("properties")
            assert objects[obj["name"]].get("description") == obj.get("description")
        assocs = [(a["name"], a.get("prefix"), a.get("properties_target")) for a in shown.get("resource_type_associations", [])]
        assert assocs == [(a["name"], a.get("prefix"), a.get("properties_target")) for a in doc.get("resource_type_associations", [])]

    image_ns = {n for n, d in files.items() if any(a["name"] == "OS::Glance::Image" for a in d.get("resource_type_associations", []))}
    assert len(image_ns) > 5
    assert set(names_of(admin.get(NS, params={"resource_types": "OS::Glance::Image", "limit": "1000"}))) == image_ns
    types = {t["name"] for t in admin.get("/v2/metadefs/resource_types").json()["resource_types"]}
    assert types == {a["name"] for d in files.values() for a in d.get("resource_type_associations", [])}
    # What was loaded is protected as the files say.
    assert "protected" in error(admin.delete(f"{NS}/OS::Compute::Quota"), 403)

    again = load(srv, str(glance_metadefs_dir()))
    assert again.returncode == 0 and again.stdout.count("skipped (exists)") == len(files)


def test_load_merge_overwrite_and_bad_files(fresh: tuple[ServerProcess, httpx.Client], tmp_path: Path) -> None:
    srv, admin = fresh
    src = tmp_path / "defs"
    src.mkdir()
    (src / "a.json").write_text('{"namespace": "Mine", "display_name": "One", "properties": {"p1": {"type": "string", "title": "P1"}}}')
    (src / "b.json").write_text("{not json")
    (src / "c.json").write_text('{"namespace": "Bad", "visibility": "everyone"}')
    (src / "notes.txt").write_text("not a definition")
    done = load(srv, str(src))
    assert done.returncode == 1
    assert "b.json: FAILED: not a JSON document" in done.stderr and "c.json: FAILED" in done.stderr
    assert "a.json: Mine created" in done.stdout
    error(admin.get(f"{NS}/Bad"), 404)

    (src / "b.json").unlink()
    (src / "c.json").unlink()
    (src / "a.json").write_text('{"namespace": "Mine", "display_name": "Two", "properties": {"p1": {"type": "integer", "title": "P1"}, "p2": {"type": "string", "title": "P2"}}}')
    assert "Mine skipped" in load(srv, str(src)).stdout
    assert "Mine merged" in load(srv, str(src), "--merge").stdout
    shown = admin.get(f"{NS}/Mine").json()
    assert shown["display_name"] == "One" and shown["properties"]["p1"]["type"] == "string" and "p2" in shown["properties"]
    assert "Mine merged" in load(srv, str(src / "a.json"), "--merge", "--prefer-new").stdout
    shown = admin.get(f"{NS}/Mine").json()
    assert shown["display_name"] == "Two" and shown["properties"]["p1"]["type"] == "integer"
    assert admin.post(f"{NS}/Mine/tags/extra").status_code == 201
    assert "Mine replaced" in load(srv, str(src), "--overwrite").stdout
    assert "tags" not in admin.get(f"{NS}/Mine").json()

    assert load(srv, str(tmp_path / "missing")).returncode == 2
    assert load(srv, str(src), "--prefer-new").returncode == 2


def test_writes_never_run_on_the_event_loop(tmp_path: Path) -> None:
    """The store begins write transactions through cache.txn.write_txn, which refuses the loop."""
    import asyncio

    from cache.txn import LoopWriteError
    from imgproxy.db import open_env
    from imgproxy.metadefs import MetadefStore

    env = open_env(tmp_path, 1 << 24)
    store = MetadefStore(env)

    async def on_loop() -> None:
        with store.write():
            pass

    with pytest.raises(LoopWriteError):
        asyncio.run(on_loop())
    env.close()
