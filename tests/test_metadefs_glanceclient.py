"""The real ``glance md-*`` commands (python-glanceclient) against imgproxy, as an operator runs them.

The client fetches ``/v2/schemas/metadefs/...`` and validates every answer against those
documents, so these tests also prove that what imgproxy answers fits the schemas it serves.

``md-tag-create-multiple --append`` is not run: the client itself fails before sending
(it puts a bool into the ``X-Openstack-Append`` header: "quote_from_bytes() expected bytes",
against Glance as well); test_metadefs.py covers that header over HTTP.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.metadefs_fixtures import glance_metadefs_dir, unique
from tests.test_glanceclient import glance, parse_rows, parse_table  # noqa: F401  (glance is a fixture)

Glance = Callable[..., subprocess.CompletedProcess[str]]


def test_namespace_create_show_list_update_delete(glance: Glance) -> None:  # noqa: F811
    name, renamed = unique("cli"), unique("cli")
    created = parse_table(glance("md-namespace-create", name, "--display-name", "CLI", "--description", "from the CLI",
                                 "--visibility", "public").stdout)
    assert created["namespace"] == name and created["visibility"] == "public" and created["protected"] == "False"
    assert created["owner"] == "admin"
    listed = [row[0] for row in parse_rows(glance("md-namespace-list", "--visibility", "public", "--page-size", "2").stdout)]
    assert name in listed  # found across pages of two, through the next links

    updated = parse_table(glance("md-namespace-update", name, "--display-name", "Renamed", "--namespace", renamed).stdout)
    assert updated["namespace"] == renamed and updated["display_name"] == "Renamed"
    assert updated["description"] == "from the CLI"  # the client sends back what it read
    assert parse_table(glance("md-namespace-show", renamed).stdout)["display_name"] == "Renamed"
    assert glance("md-namespace-show", name, check=False).returncode != 0

    glance("md-namespace-delete", renamed)
    gone = glance("md-namespace-show", renamed, check=False)
    assert gone.returncode != 0 and f"namespace={renamed} was not found" in gone.stderr


def test_import_of_a_glance_definition_file(glance: Glance, tmp_path: Path) -> None:  # noqa: F811
    doc = json.loads((glance_metadefs_dir() / "compute-quota.json").read_text())
    name = unique("OS::Compute::Quota")
    path = tmp_path / "quota.json"
    path.write_text(json.dumps({**doc, "namespace": name}))
    imported = parse_table(glance("md-namespace-import", "--file", str(path)).stdout)
    assert imported["namespace"] == name and imported["protected"] == "True"
    assert json.loads(imported["resource_type_associations"]) == [a["name"] for a in doc["resource_type_associations"]]

    objects = {row[0] for row in parse_rows(glance("md-object-list", name).stdout) if row[0]}  # wrapped rows: ""
    assert objects == {o["name"] for o in doc["objects"]}
    cpu = next(o for o in doc["objects"] if o["name"] == "CPU Limits")
    shown = parse_table(glance("md-object-show", name, "CPU Limits").stdout)
    assert sorted(json.loads(shown["properties"])) == sorted(cpu["properties"])
    prop = parse_table(glance("md-object-property-show", name, "CPU Limits", "quota:cpu_shares").stdout)
    assert prop["type"] == cpu["properties"]["quota:cpu_shares"]["type"]

    refused = glance("md-namespace-delete", name, check=False)
    assert refused.returncode != 0 and "protected" in refused.stderr
    glance("md-namespace-update", name, "--protected", "False")
    glance("md-namespace-delete", name)


def test_objects_and_properties(glance: Glance) -> None:  # noqa: F811
    name = unique("cli")
    glance("md-namespace-create", name)
    schema = {"description": "an object", "required": ["size"], "properties": {"size": {"type": "integer", "title": "Size"}}}
    obj = parse_table(glance("md-object-create", name, "--name", "Disk", "--schema", json.dumps(schema)).stdout)
    assert obj["name"] == "Disk" and json.loads(obj["required"]) == ["size"]
    assert parse_table(glance("md-object-update", name, "Disk", "--name", "Volume").stdout)["name"] == "Volume"
    assert [row[0] for row in parse_rows(glance("md-object-list", name).stdout)] == ["Volume"]
    duplicate = glance("md-object-create", name, "--name", "Volume", "--schema", "{}", check=False)
    assert duplicate.returncode != 0 and "already exists" in duplicate.stderr

    prop = parse_table(glance("md-property-create", name, "--name", "hw_mode", "--title", "Mode", "--type", "string",
                              "--schema", '{"enum": ["fast", "safe"]}').stdout)
    assert prop["name"] == "hw_mode" and json.loads(prop["enum"]) == ["fast", "safe"]
    assert parse_table(glance("md-property-update", name, "hw_mode", "--title", "Speed").stdout)["title"] == "Speed"
    assert parse_rows(glance("md-property-list", name).stdout) == [["hw_mode", "Speed", "string"]]
    assert parse_table(glance("md-property-show", name, "hw_mode").stdout)["title"] == "Speed"

    glance("md-property-delete", name, "hw_mode")
    assert parse_rows(glance("md-property-list", name).stdout) == []
    glance("md-namespace-objects-delete", name)
    assert parse_rows(glance("md-object-list", name).stdout) == []
    glance("md-property-create", name, "--name", "p", "--title", "P", "--type", "boolean", "--schema", "{}")
    glance("md-namespace-properties-delete", name)
    assert parse_rows(glance("md-property-list", name).stdout) == []
    glance("md-namespace-delete", name)


def test_tags(glance: Glance) -> None:  # noqa: F811
    name = unique("cli")
    glance("md-namespace-create", name)
    assert parse_table(glance("md-tag-create", name, "--name", "single").stdout)["name"] == "single"
    created = parse_rows(glance("md-tag-create-multiple", name, "--names", "a,b", "--delim", ",").stdout)
    assert created == [["a"], ["b"]]
    assert parse_rows(glance("md-tag-list", name).stdout) == [["b"], ["a"]]  # the list replaced "single"
    assert parse_table(glance("md-tag-update", name, "a", "--name", "c").stdout)["name"] == "c"
    assert parse_table(glance("md-tag-show", name, "c").stdout)["name"] == "c"
    glance("md-tag-delete", name, "c")
    assert parse_rows(glance("md-tag-list", name).stdout) == [["b"]]
    glance("md-namespace-tags-delete", name)
    assert parse_rows(glance("md-tag-list", name).stdout) == []
    glance("md-namespace-delete", name)


def test_resource_type_associations(glance: Glance) -> None:  # noqa: F811
    name, rtype = unique("cli"), unique("OS::Cli::Type")
    glance("md-namespace-create", name)
    glance("md-property-create", name, "--name", "cores", "--title", "Cores", "--type", "integer", "--schema", "{}")
    assoc = parse_table(glance("md-resource-type-associate", name, "--name", rtype, "--prefix", "hw_",
                               "--properties-target", "image").stdout)
    assert assoc["name"] == rtype and assoc["prefix"] == "hw_"
    assert parse_rows(glance("md-namespace-resource-type-list", name).stdout) == [[rtype, "hw_", "image"]]
    assert [rtype] in parse_rows(glance("md-resource-type-list").stdout)
    assert [name] in parse_rows(glance("md-namespace-list", "--resource-types", rtype).stdout)
    shown = parse_table(glance("md-namespace-show", name, "--resource-type", rtype).stdout)
    assert json.loads(shown["properties"]) == ["hw_cores"]
    glance("md-resource-type-deassociate", name, rtype)
    assert parse_rows(glance("md-namespace-resource-type-list", name).stdout) == []
    glance("md-namespace-delete", name)


def test_non_admins_read_but_do_not_write(glance: Glance, client_for: Callable[..., httpx.Client]) -> None:  # noqa: F811
    name = unique("cli")
    glance("md-namespace-create", name, "--visibility", "public")
    token = client_for("team-cli", "member").headers["X-Auth-Token"]
    assert parse_table(glance("md-namespace-show", name, token=token).stdout)["namespace"] == name
    for args in (("md-namespace-create", unique("cli")), ("md-tag-create", name, "--name", "t"),
                 ("md-namespace-delete", name)):
        refused = glance(*args, token=token, check=False)
        assert refused.returncode != 0 and "not authorized" in refused.stderr, args  # the 403's message
    assert "tags" not in parse_table(glance("md-namespace-show", name).stdout)
    glance("md-namespace-delete", name)
