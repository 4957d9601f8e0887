"""Version discovery, health, schemas and info documents; real clients against them."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tests.server import ServerProcess


def test_discovery(server: ServerProcess) -> None:
    r = httpx.get(server.url + "/")
    assert r.status_code == 300
    versions = r.json()["versions"]
    current = [v for v in versions if v["status"] == "CURRENT"]
    assert len(current) == 1 and current[0]["id"].startswith("v2.")
    assert all(v["links"][0]["href"] == server.url + "/v2/" for v in versions)
    assert {"v2.0", "v2.16"} <= {v["id"] for v in versions}
    assert httpx.get(server.url + "/versions").json() == r.json()
    h = httpx.get(server.url + "/healthcheck")
    assert h.status_code == 200 and h.text == "OK"


def test_minor_version_prefixes(admin: httpx.Client) -> None:
    img = admin.post("/v2.15/images", json={"name": "v"}).json()
    assert admin.get(f"/v2.1/images/{img['id']}").json()["id"] == img["id"]
    assert admin.get(f"/v2/images/{img['id']}").status_code == 200


def test_schemas(admin: httpx.Client) -> None:
    image = admin.get("/v2/schemas/image").json()
    assert image["name"] == "image" and image["additionalProperties"] == {"type": "string"}
    props = image["properties"]
    for key in ("status", "size", "checksum", "os_hash_value", "created_at", "self", "file", "schema"):
        assert props[key]["readOnly"] is True
    assert "qcow2" in props["disk_format"]["enum"] and "bare" in props["container_format"]["enum"]
    assert {link["rel"] for link in image["links"]} == {"self", "enclosure", "describedby"}
    images = admin.get("/v2/schemas/images").json()
    assert images["properties"]["images"]["items"]["name"] == "image"
    assert admin.get("/v2/schemas/member").json()["properties"]["status"]["enum"] == ["pending", "accepted", "rejected"]
    assert admin.get("/v2/schemas/members").json()["name"] == "members"
    assert admin.get("/v2/schemas/metadefs/namespace").status_code == 200
    assert admin.get("/v2/schemas/metadefs/resource_type").status_code == 200


def test_info(admin: httpx.Client) -> None:
    imp = admin.get("/v2/info/import").json()
    # Glance's default enabled_import_methods.
    assert imp["import-methods"]["value"] == ["glance-direct", "web-download", "copy-image"]
    assert imp["import-methods"]["type"] == "array"
    stores = admin.get("/v2/info/stores").json()["stores"]
    # Glance's flags are the string "true" (glance/api/v2/discovery.py); the one store's id is its kind.
    assert len(stores) == 1 and stores[0]["default"] == "true" and stores[0]["id"] == "file"


def test_openstacksdk_discovers_and_lists(server: ServerProcess, make_token: Callable[..., str]) -> None:
    import openstack

    token = make_token("sdk-project", "member")
    while httpx.get(server.url + "/v2/schemas/image", headers={"X-Auth-Token": token}).status_code == 401:
        time.sleep(0.05)
    conn = openstack.connect(
        auth_type="admin_token", auth={"endpoint": server.url, "token": token}, image_endpoint_override=server.url
    )
    try:
        img = conn.image.create_image(name="sdk-img", disk_format="raw", container_format="bare")
        assert img.status == "queued" and img.owner == "sdk-project"
        assert [i.id for i in conn.image.images(name="sdk-img")] == [img.id]
        conn.image.delete_image(img.id)
        assert list(conn.image.images(name="sdk-img")) == []
    finally:
        conn.close()
