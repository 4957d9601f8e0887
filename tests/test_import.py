"""Interoperable image import over HTTP against a real imgproxy: glance-direct, web-download (from a
real nginx), glance-download (from another imgproxy), the tasks API, Glance's errors, and imports
a crash (kill -9) interrupted.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.import_helpers import new_image, stage, start_import, wait_task, web_download
from tests.nginx_fixtures import NginxStore, nginx_store, nginx_store_factory  # noqa: F401 - fixtures
from tests.server import ServerProcess

pytestmark = pytest.mark.timeout(120)

CHUNK = 64 * 1024
DATA = os.urandom(5 * CHUNK + 77)
OCTETS = {"Content-Type": "application/octet-stream"}
LOOPBACK_OPEN = {"allowed_ports": [], "allowed_networks": ["127.0.0.0/8"]}
ALL_METHODS = ["glance-direct", "web-download", "copy-image", "glance-download"]


def config(**extra: Any) -> dict[str, Any]:
    return {"chunk_size": CHUNK, "import_filtering_opts": LOOPBACK_OPEN, "enabled_import_methods": ALL_METHODS,
            **extra}


@pytest.fixture(scope="module")
def importer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # The file store cached like a remote one, so imports show the cache filling as they go (a
    # local store is read in place and keeps no chunks).
    proc = ServerProcess(tmp_path_factory.mktemp("import") / "data", config=config(file={"in_place": False}))
    with proc:
        yield proc


@pytest.fixture(scope="module")
def admin_client(importer: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=importer.url, headers={"X-Auth-Token": importer.admin_token}, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def member(importer: ServerProcess) -> Callable[[str, str], httpx.Client]:
    from imgproxy.tokens import create_token

    clients: list[httpx.Client] = []

    def make(project: str, role: str = "member") -> httpx.Client:
        token = create_token(importer.data_dir / "tokens.json", project=project, roles=[role])
        c = httpx.Client(base_url=importer.url, headers={"X-Auth-Token": token}, timeout=30)
        clients.append(c)
        while c.get("/v2/schemas/task").status_code == 401:
            time.sleep(0.05)
        return c

    yield make
    for c in clients:
        c.close()


def digests_of(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "checksum": hashlib.md5(data).hexdigest(), "os_hash_algo": "sha512",
            "os_hash_value": hashlib.sha512(data).hexdigest()}


def assert_imported(client: httpx.Client, image_id: str, data: bytes) -> dict[str, Any]:
    task, image = wait_task(client, image_id)
    assert task["status"] == "success" and task["result"] == {"image_id": image_id}, task
    assert image["status"] == "active", image
    assert {k: image[k] for k in ("size", "checksum", "os_hash_algo", "os_hash_value")} == digests_of(data)
    assert "os_glance_import_task" not in image and image["os_glance_importing_to_stores"] == ""
    assert "os_glance_stage_host" not in image  # hidden, as Glance hides it
    got = client.get(f"/v2/images/{image_id}/file")
    assert got.status_code == 200 and got.content == data
    return image


# ---- glance-direct -------------------------------------------------------------------------


def test_glance_direct(admin_client: httpx.Client, member: Callable[..., httpx.Client]) -> None:
    owner = member("direct-project")
    created = owner.post("/v2/images", json={"name": "gd", "disk_format": "raw", "container_format": "bare"})
    assert created.headers["OpenStack-image-import-methods"] == ",".join(ALL_METHODS)
    image_id = created.json()["id"]
    assert stage(owner, image_id, DATA).status_code == 204
    staged = owner.get(f"/v2/images/{image_id}").json()
    assert staged["status"] == "uploading" and staged["size"] == len(DATA) and staged["checksum"] is None
    assert "os_glance_stage_host" not in staged
    assert stage(owner, image_id, DATA).status_code == 409  # staged already
    assert start_import(owner, image_id, "glance-direct").status_code == 202
    assert_imported(owner, image_id, DATA)
    # The import filled the cache as it went (the upload's ingest): the image is cached.
    cached = admin_client.get("/v2/cache").json()["cached_images"]
    assert image_id in [c["image_id"] for c in cached]
    # Its task, seen by its owner on the image and by an admin on the tasks API.
    tasks = owner.get(f"/v2/images/{image_id}/tasks").json()["tasks"]
    assert [t["status"] for t in tasks] == ["success"]
    task = tasks[0]
    assert task["type"] == "api_image_import" and task["owner"] == "direct-project"
    assert task["input"]["import_req"] == {"method": {"name": "glance-direct"}} and task["input"]["backend"] == ["file"]
    assert owner.get(f"/v2/tasks/{task['id']}").status_code == 403  # tasks API: admins only
    assert owner.get("/v2/tasks").status_code == 403
    shown = admin_client.get(f"/v2/tasks/{task['id']}").json()
    assert shown["status"] == "success" and shown["image_id"] == image_id and shown["expires_at"].endswith("Z")
    listed = admin_client.get("/v2/tasks", params={"status": "success", "limit": 1000}).json()
    assert task["id"] in [t["id"] for t in listed["tasks"]] and "input" not in listed["tasks"][0]
    # Another project does not see the image, nor its tasks.
    other = member("direct-other")
    assert other.get(f"/v2/images/{image_id}/tasks").status_code == 404


def test_stage_and_import_errors(admin_client: httpx.Client, member: Callable[..., httpx.Client]) -> None:
    owner = member("errors-project")
    image_id = new_image(owner)
    r = owner.put(f"/v2/images/{image_id}/stage", content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    assert start_import(owner, image_id, "glance-direct").status_code == 409  # not staged
    for body, fragment in (({}, "'method'"), ({"method": {}}, "'name'"), ({"method": {"name": "nope"}}, "nope"),
                           ({"method": {"name": "glance-direct"}, "all_stores": "yes"}, "boolean"),
                           ([1], "object")):
        r = owner.post(f"/v2/images/{image_id}/import", json=body)
        assert r.status_code == 400 and fragment in r.json()["error"]["message"], (body, r.text)
    r = start_import(owner, image_id, "glance-download", glance_image_id=str(image_id))
    assert r.status_code == 400 and "glance_region" in r.text
    r = start_import(owner, image_id, "glance-download", glance_region="Nowhere", glance_image_id="x")
    assert r.status_code == 400 and "UUID" in r.text
    r = start_import(owner, image_id, "glance-download", glance_region="Nowhere", glance_image_id=image_id)
    assert r.status_code == 400 and "unknown glance_region" in r.text
    assert start_import(owner, image_id, "copy-image").status_code == 409  # not active
    r = start_import(owner, image_id, "web-download", uri="http://127.0.0.1:1/x", stores=["nowhere"])
    assert r.status_code == 409 and "nowhere" in r.text
    r = start_import(owner, image_id, "web-download", uri="http://127.0.0.1:1/x", stores=["file"], all_stores=True)
    assert r.status_code == 400
    # Formats must be set first.
    bare = owner.post("/v2/images", json={"name": "no-formats"}).json()["id"]
    r = web_download(owner, bare, "http://127.0.0.1:1/x")
    assert r.status_code == 409 and "container_format" in r.text
    # Not the owner: 404 for an invisible image, 403 for a reader of the project.
    assert start_import(member("errors-other"), image_id, "web-download", uri="http://127.0.0.1:1/x").status_code == 404
    reader = member("errors-project", "reader")
    assert web_download(reader, image_id, "http://127.0.0.1:1/x").status_code == 403
    assert stage(reader, image_id, b"x").status_code == 403
    # Stage only while queued; nothing changed by all of the above.
    image = owner.get(f"/v2/images/{image_id}").json()
    assert image["status"] == "queued" and "os_glance_import_task" not in image
    assert owner.get("/v2/images/00000000-0000-4000-8000-000000000000/tasks").status_code == 404
    assert admin_client.get("/v2/tasks/00000000-0000-4000-8000-000000000000").status_code == 404
    assert admin_client.get("/v2/tasks", params={"sort_dir": "up"}).status_code == 400
    assert admin_client.get("/v2/tasks", params={"status": "done"}).status_code == 400


def test_stage_over_the_cap_keeps_nothing(server_factory: Callable[..., ServerProcess]) -> None:
    proc = server_factory(noauth=True, config=config(image_size_cap=100_000))
    with httpx.Client(base_url=proc.url, timeout=30) as c:
        image_id = new_image(c)
        assert stage(c, image_id, DATA).status_code == 413
        assert c.get(f"/v2/images/{image_id}").json()["status"] == "queued"
        assert not list((proc.data_dir / "staging").iterdir())
        assert stage(c, image_id, DATA[:1000]).status_code == 204  # a smaller one fits


def test_glance_direct_disabled(server_factory: Callable[..., ServerProcess]) -> None:
    proc = server_factory(noauth=True, config={"enabled_import_methods": ["web-download"]})
    with httpx.Client(base_url=proc.url, timeout=30) as c:
        created = c.post("/v2/images", json={"disk_format": "raw", "container_format": "bare"})
        assert created.headers["OpenStack-image-import-methods"] == "web-download"
        assert c.get("/v2/info/import").json()["import-methods"]["value"] == ["web-download"]
        assert stage(c, created.json()["id"], b"x").status_code == 404
        r = start_import(c, created.json()["id"], "glance-direct")
        assert r.status_code == 400 and "Unknown import method" in r.text


# ---- web-download --------------------------------------------------------------------------


def test_web_download(admin_client: httpx.Client, nginx_store: NginxStore) -> None:  # noqa: F811
    url = nginx_store.put("web.img", DATA)
    image_id = new_image(admin_client)
    assert web_download(admin_client, image_id, url).status_code == 202
    assert_imported(admin_client, image_id, DATA)
    assert web_download(admin_client, image_id, url).status_code == 409  # active now
    # A missing file: the task fails, the image is queued again and says which store failed.
    missing = new_image(admin_client)
    assert web_download(admin_client, missing, nginx_store.url("missing.img")).status_code == 202
    task, image = wait_task(admin_client, missing)
    assert task["status"] == "failure" and "404" in task["message"]
    assert image["status"] == "queued" and image["os_glance_failed_import"] == "file"
    assert image["size"] is None and "os_glance_import_task" not in image
    # It can be imported again once the file is there; the failed store is cleared.
    nginx_store.put("missing.img", DATA)
    assert web_download(admin_client, missing, nginx_store.url("missing.img")).status_code == 202
    image = assert_imported(admin_client, missing, DATA)
    assert image["os_glance_failed_import"] == ""
    assert [t["status"] for t in admin_client.get(f"/v2/images/{missing}/tasks").json()["tasks"]] == [
        "failure", "success"]


@pytest.fixture
def slow_import(server_factory: Callable[..., ServerProcess],
                nginx_store_factory: Callable[..., NginxStore]) -> Iterator[tuple[ServerProcess, httpx.Client, str, str]]:  # noqa: F811
    """A web-download from a throttled nginx, just started: ``(server, client, image id, url)``."""
    slow = nginx_store_factory(limit_rate="100k")
    url = slow.put("slow.img", DATA)
    proc = server_factory(noauth=True, config=config())
    with httpx.Client(base_url=proc.url, timeout=30) as c:
        image_id = new_image(c)
        assert web_download(c, image_id, url).status_code == 202
        yield proc, c, image_id, url


def test_a_second_import_while_one_runs_is_refused(slow_import: tuple[ServerProcess, httpx.Client, str, str]) -> None:
    _, c, image_id, url = slow_import
    importing = c.get(f"/v2/images/{image_id}").json()
    assert importing["status"] == "importing" and importing["os_glance_importing_to_stores"] == "file"
    assert importing["os_glance_import_task"]
    r = web_download(c, image_id, url)
    assert r.status_code == 409  # the image is importing, no longer queued
    assert_imported(c, image_id, DATA)


def test_deleting_an_image_mid_import(slow_import: tuple[ServerProcess, httpx.Client, str, str]) -> None:
    proc, c, image_id, _ = slow_import
    task_id = c.get(f"/v2/images/{image_id}").json()["os_glance_import_task"]
    assert c.delete(f"/v2/images/{image_id}").status_code == 204
    deadline = time.monotonic() + 30
    while (task := c.get(f"/v2/tasks/{task_id}").json())["status"] not in ("success", "failure"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert task["status"] == "failure" and "deleted" in task["message"]
    assert [p.name for p in (proc.data_dir / "images").iterdir() if image_id in p.name] == []  # nothing it wrote


# ---- crashes -------------------------------------------------------------------------------


def test_import_interrupted_by_kill_9_fails_cleanly(tmp_path: Path,
                                                    nginx_store_factory: Callable[..., NginxStore]) -> None:  # noqa: F811
    slow = nginx_store_factory(limit_rate="50k")
    url = slow.put("slow.img", DATA)
    proc = ServerProcess(tmp_path / "data", noauth=True, config=config())
    proc.start()
    try:
        with httpx.Client(base_url=proc.url, timeout=30) as c:
            image_id = new_image(c)
            assert web_download(c, image_id, url).status_code == 202
            staged_id = new_image(c)
            assert stage(c, staged_id, DATA).status_code == 204
            # A stage cut mid-body by the crash, too.
            cut_id = new_image(c)

            def trickle() -> Iterator[bytes]:
                yield DATA[:CHUNK]
                proc.kill()
                yield DATA[CHUNK:]

            with pytest.raises(httpx.TransportError):
                c.put(f"/v2/images/{cut_id}/stage", content=trickle(), headers=OCTETS)
            assert proc.proc is not None and proc.proc.poll() is not None
        proc.start()
        with httpx.Client(base_url=proc.url, timeout=30) as c:
            task, image = wait_task(c, image_id, timeout=5)
            assert task["status"] == "failure" and "Interrupted" in task["message"], task
            assert image["status"] == "queued" and image["os_glance_failed_import"] == "file"
            assert image["os_glance_importing_to_stores"] == "" and "os_glance_import_task" not in image
            assert c.get(f"/v2/images/{cut_id}").json()["status"] == "queued"
            # A stage that was complete survives the crash, and imports.
            assert c.get(f"/v2/images/{staged_id}").json()["status"] == "uploading"
            assert start_import(c, staged_id, "glance-direct").status_code == 202
            assert_imported(c, staged_id, DATA)
            # And the interrupted image imports again.
            assert web_download(c, image_id, slow.put("fast.img", DATA)).status_code == 202
            assert_imported(c, image_id, DATA)
        assert sorted(p.name for p in (proc.data_dir / "staging").iterdir()) == []
    finally:
        proc.stop()


# ---- glance-download -----------------------------------------------------------------------


def test_glance_download_from_another_imgproxy(server_factory: Callable[..., ServerProcess]) -> None:
    source = server_factory(noauth=True, config={"chunk_size": CHUNK})
    target = server_factory(noauth=True, config=config(glance_download={"regions": {"RegionTwo": source.url}}))
    with httpx.Client(base_url=source.url, timeout=30) as src, httpx.Client(base_url=target.url, timeout=30) as dst:
        remote_id = src.post("/v2/images", json={"name": "remote", "disk_format": "iso", "container_format": "ova",
                                                 "hw_disk_bus": "scsi", "os_distro": "debian",
                                                 "not_copied": "x"}).json()["id"]
        assert src.put(f"/v2/images/{remote_id}/file", content=DATA, headers=OCTETS).status_code == 204
        image_id = new_image(dst, name="local")  # raw/bare: the remote's formats replace them
        r = start_import(dst, image_id, "glance-download", glance_region="RegionTwo", glance_image_id=remote_id)
        assert r.status_code == 202, r.text
        image = assert_imported(dst, image_id, DATA)
        assert (image["disk_format"], image["container_format"]) == ("iso", "ova")
        assert image["hw_disk_bus"] == "scsi" and image["os_distro"] == "debian"
        assert "not_copied" not in image
        task = dst.get(f"/v2/images/{image_id}/tasks").json()["tasks"][0]
        assert task["input"]["import_req"]["method"]["glance_service_interface"] == "public"
        # A remote image that is not active: the task fails and the formats come back.
        queued_remote = src.post("/v2/images", json={"disk_format": "qcow2", "container_format": "bare"}).json()["id"]
        other = new_image(dst)
        assert start_import(dst, other, "glance-download", glance_region="RegionTwo",
                            glance_image_id=queued_remote).status_code == 202
        task, image = wait_task(dst, other)
        assert task["status"] == "failure" and "should be active" in task["message"]
        assert image["status"] == "queued" and image["disk_format"] == "raw"


# ---- copy-image ----------------------------------------------------------------------------


def test_copy_image_rules(importer: ServerProcess, admin_client: httpx.Client,
                          member: Callable[..., httpx.Client]) -> None:
    owner = member("copy-project")
    image_id = new_image(owner)
    assert owner.put(f"/v2/images/{image_id}/file", content=DATA, headers=OCTETS).status_code == 204
    assert start_import(owner, image_id, "copy-image", stores=["file"]).status_code == 403  # admins only
    r = start_import(admin_client, image_id, "copy-image", stores=["file"])
    assert r.status_code == 400 and "already present at store 'file'" in r.json()["error"]["message"]
    # Every store holds it already: nothing to do, no task.
    assert start_import(admin_client, image_id, "copy-image", all_stores=True).status_code == 202
    assert owner.get(f"/v2/images/{image_id}/tasks").json()["tasks"] == []
    assert owner.get(f"/v2/images/{image_id}").json()["status"] == "active"


def test_deleting_a_staged_image_removes_its_staged_data(importer: ServerProcess, admin_client: httpx.Client) -> None:
    image_id = new_image(admin_client)
    assert stage(admin_client, image_id, DATA).status_code == 204
    assert (importer.data_dir / "staging" / image_id).exists()
    assert admin_client.delete(f"/v2/images/{image_id}").status_code == 204
    assert not (importer.data_dir / "staging" / image_id).exists()


def test_imports_across_two_stores(tmp_path: Path, server_factory: Callable[..., ServerProcess],
                                   nginx_store: NginxStore) -> None:  # noqa: F811
    """Two real file stores: an import to both, copy-image into the second, all_stores."""
    one, two = tmp_path / "one", tmp_path / "two"
    proc = server_factory(noauth=True, config=config(
        default_store="one", stores={"one": {"url": one.as_uri()}, "two": {"url": two.as_uri()}}))
    with httpx.Client(base_url=proc.url, timeout=30) as c:
        both = new_image(c)
        r = start_import(c, both, "web-download", uri=nginx_store.put("two.img", DATA), stores=["one", "two"])
        assert r.status_code == 202, r.text
        image = assert_imported(c, both, DATA)
        assert image["stores"] == "one,two" and (one / both).read_bytes() == (two / both).read_bytes() == DATA
        task = c.get(f"/v2/images/{both}/tasks").json()["tasks"][0]
        assert task["input"]["backend"] == ["one", "two"]

        single = new_image(c)
        assert c.put(f"/v2/images/{single}/file", content=DATA, headers=OCTETS).status_code == 204
        assert c.get(f"/v2/images/{single}").json()["stores"] == "one"
        assert start_import(c, single, "copy-image", stores=["two"]).status_code == 202
        task, image = wait_task(c, single)
        assert task["status"] == "success", task
        assert image["status"] == "active" and image["stores"] == "one,two" and (two / single).read_bytes() == DATA
        assert image["os_glance_importing_to_stores"] == "" and image["os_glance_failed_import"] == ""
        (one / single).unlink()  # the copy in "two" now serves it
        assert c.delete(f"/v2/cache/{single}").status_code in (200, 204)
        assert c.get(f"/v2/images/{single}/file").content == DATA
        # all_stores: every writable store holds it already, nothing to do.
        assert start_import(c, single, "copy-image", all_stores=True).status_code == 202
        assert len(c.get(f"/v2/images/{single}/tasks").json()["tasks"]) == 1
        r = start_import(c, single, "copy-image", stores=["three"])
        assert r.status_code == 409 and "three" in r.text
