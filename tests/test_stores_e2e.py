"""Several stores at once (Glance's multiple back ends), against real stores on loopback:
a file store ("local", the default) and an S3 bucket on ``rclone serve s3`` ("fast").

Everything goes over HTTP to ``imgproxy serve`` (or through the glance CLI); the stores are
inspected on their own: the file store's directory, the bucket with an S3 client of the
test's own.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import obstore
import pytest

from tests.backend_contract import payload
from tests.s3_fixtures import S3Server, start_rclone
from tests.server import ServerProcess
from tests.test_deletes import journal, wait_for
from tests.helpers import drop_from_cache

pytestmark = pytest.mark.timeout(180)

DATA = payload(300_000 + 17, 70)  # several 64 KiB chunks, not a multiple of one
JSON = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def rclone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_rclone(tmp_path_factory.mktemp("rclone"))
    try:
        yield server
    finally:
        server.stop()


_PREFIXES = iter(range(10**6))


def stores_config(root: Path, s3: S3Server, **more: Any) -> dict[str, Any]:
    prefix = f"stores{next(_PREFIXES)}"
    return {
        "chunk_size": 64 * 1024,
        "prefetch_interval": 0,
        "default_store": "local",
        "stores": {
            "local": {"url": (root / "local-images").as_uri(), "description": "Local disk"},
            "fast": {"url": s3.url(prefix), "description": "S3 on rclone", "weight": 5,
                     **s3.options(part_size=5 * 1024 * 1024)},
        },
        **more,
    }


class Stores:
    """A running imgproxy with the two stores, and what a test looks at."""

    def __init__(self, proc: ServerProcess, s3: S3Server, config: dict[str, Any]) -> None:
        self.proc, self.s3, self.config = proc, s3, config
        self.local_dir = Path(config["stores"]["local"]["url"].removeprefix("file://"))
        self.prefix = config["stores"]["fast"]["url"].rsplit("/", 1)[1]

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.proc.url, headers={"X-Auth-Token": token or self.proc.admin_token},
                            timeout=60)

    def token(self, project: str, role: str = "member") -> str:
        from imgproxy.tokens import create_token

        return create_token(self.proc.data_dir / "tokens.json", project=project, roles=[role])

    def in_local(self, image_id: str) -> bool:
        return (self.local_dir / image_id).exists()

    def in_fast(self, image_id: str) -> bytes | None:
        try:
            return bytes(obstore.get(self.s3.raw(self.prefix), image_id).bytes())
        except FileNotFoundError:
            return None


@pytest.fixture
def stores(rclone: S3Server, tmp_path: Path) -> Iterator[Stores]:
    config = stores_config(tmp_path, rclone)
    with ServerProcess(tmp_path / "data", config=config) as proc:
        yield Stores(proc, rclone, config)


def create(api: httpx.Client) -> str:
    r = api.post("/v2/images", json={"name": "stores", "disk_format": "raw", "container_format": "bare"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_stores_are_listed_as_glance_lists_them(stores: Stores) -> None:
    with stores.client() as api:
        assert api.get("/v2/info/stores").json() == {"stores": [
            {"id": "local", "description": "Local disk", "default": "true"},
            {"id": "fast", "description": "S3 on rclone"},
        ]}
        detail = api.get("/v2/info/stores/detail")
        assert detail.status_code == 200
        local, fast = detail.json()["stores"]
        assert (local["type"], local["weight"], local["properties"]["data_dir"]) == ("file", 0, str(stores.local_dir))
        assert (fast["type"], fast["weight"]) == ("s3", 5)
        assert fast["properties"]["s3_store_large_object_size"] == 5 * 1024 * 1024
        assert stores.s3.secret_key not in detail.text
        r = api.post("/v2/images", json={"name": "x"})
        assert r.headers["OpenStack-image-store-ids"] == "local,fast"
        # Glance lists its enabled_import_methods (the default three).
        assert r.headers["OpenStack-image-import-methods"] == "glance-direct,web-download,copy-image"
        assert api.get("/v2/info/import").json()["import-methods"]["value"] == [
            "glance-direct", "web-download", "copy-image"]
    with stores.client(stores.token("stores-member")) as member:
        assert len(member.get("/v2/info/stores").json()["stores"]) == 2
        refused = member.get("/v2/info/stores/detail")
        assert refused.status_code == 403 and refused.json()["error"]["code"] == 403


def test_upload_goes_to_the_store_the_header_names(stores: Stores) -> None:
    with stores.client() as api:
        default_id, fast_id = create(api), create(api)
        assert api.put(f"/v2/images/{default_id}/file", content=DATA, headers=JSON).status_code == 204
        r = api.put(f"/v2/images/{fast_id}/file", content=DATA, headers={**JSON, "X-Image-Meta-Store": "fast"})
        assert r.status_code == 204, r.text
        assert stores.in_local(default_id) and stores.in_fast(default_id) is None
        assert stores.in_fast(fast_id) == DATA and not stores.in_local(fast_id)
        assert api.get(f"/v2/images/{default_id}").json()["stores"] == "local"
        assert api.get(f"/v2/images/{fast_id}").json()["stores"] == "fast"
        [location] = api.get(f"/v2/images/{fast_id}/locations").json()
        assert location["metadata"] == {"store": "fast"} and location["url"].startswith("s3://")
        assert api.get(f"/v2/images/{fast_id}/file").content == DATA

        queued = create(api)
        r = api.put(f"/v2/images/{queued}/file", content=DATA, headers={**JSON, "X-Image-Meta-Store": "nowhere"})
        assert r.status_code == 400 and "nowhere" in r.json()["error"]["message"]
        assert api.get(f"/v2/images/{queued}").json()["status"] == "queued"
        assert "stores" not in api.get(f"/v2/images/{queued}").json()


def copy_to(api: httpx.Client, image_id: str, *stores: str) -> None:
    r = api.post(f"/v2/images/{image_id}/import", json={"method": {"name": "copy-image"}, "stores": list(stores)})
    assert r.status_code == 202, r.text
    # The import's task ends; the image's list of stores still to do is then empty.
    assert wait_for(lambda: api.get(f"/v2/images/{image_id}/tasks").json()["tasks"][-1]["status"] == "success")
    assert api.get(f"/v2/images/{image_id}").json()["os_glance_importing_to_stores"] == ""


def test_reads_fall_back_to_the_next_copy(stores: Stores) -> None:
    with stores.client() as api:
        image_id = create(api)
        assert api.put(f"/v2/images/{image_id}/file", content=DATA, headers=JSON).status_code == 204
        copy_to(api, image_id, "fast")
        image = api.get(f"/v2/images/{image_id}").json()
        assert image["stores"] == "local,fast" and image["os_glance_failed_import"] == ""
        assert stores.in_fast(image_id) == DATA
        again = api.post(f"/v2/images/{image_id}/import", json={"method": {"name": "copy-image"}, "stores": ["fast"]})
        assert again.status_code == 400  # already there, as Glance answers

        # The copy in the store read first (fast: the higher weight) goes: reads use the local one.
        obstore.delete(stores.s3.raw(stores.prefix), image_id)
        drop_from_cache(api, image_id)
        r = api.get(f"/v2/images/{image_id}/file")
        assert r.status_code == 200 and r.content == DATA
        assert r.headers["Content-MD5"] == hashlib.md5(DATA).hexdigest()
        assert "copy in store fast" in stores.proc.log()

        # Both copies gone: a clear 503 naming the stores, nothing served.
        (stores.local_dir / image_id).unlink()
        drop_from_cache(api, image_id)
        r = api.get(f"/v2/images/{image_id}/file")
        assert r.status_code == 503 and "store fast" in r.json()["error"]["message"], r.text


def test_prefer_reads_the_named_store_first_and_delete_removes_every_copy(stores: Stores) -> None:
    with stores.client() as api:
        image_id = create(api)
        r = api.put(f"/v2/images/{image_id}/file", content=DATA, headers={**JSON, "X-Image-Meta-Store": "fast"})
        assert r.status_code == 204
        copy_to(api, image_id, "local")
        assert api.get(f"/v2/images/{image_id}").json()["stores"] == "fast,local"
        (stores.local_dir / image_id).write_bytes(b"x" * len(DATA))  # the local copy is now wrong...
        drop_from_cache(api, image_id)
        assert api.get(f"/v2/images/{image_id}/file?prefer=fast").content == DATA  # ...but not read
        bad = api.get(f"/v2/images/{image_id}/file?prefer=elsewhere")
        assert bad.status_code == 400 and "elsewhere" in bad.json()["error"]["message"]

        assert api.delete(f"/v2/images/{image_id}").status_code == 204
        assert wait_for(lambda: not stores.in_local(image_id) and stores.in_fast(image_id) is None)


def test_copy_refusals(stores: Stores) -> None:
    with stores.client() as api:
        image_id = create(api)
        body = {"method": {"name": "copy-image"}, "stores": ["fast"]}
        assert api.post(f"/v2/images/{image_id}/import", json=body).status_code == 409  # not active
        assert api.put(f"/v2/images/{image_id}/file", content=DATA, headers=JSON).status_code == 204
        # web-download of an active image: 409 (Glance checks the status first); copy-image with
        # no stores means the default store, which holds it already: 400.
        for bad, status in [({"method": {"name": "web-download"}}, 409), ({"method": {"name": "copy-image"}}, 400),
                            ({**body, "stores": ["nowhere"]}, 409), ([], 400)]:
            r = api.post(f"/v2/images/{image_id}/import", json=bad)
            assert r.status_code == status and r.json()["error"]["code"] == status, (bad, r.text)
        with stores.client(stores.token("copy-member")) as member:
            own = create(member)
            assert member.put(f"/v2/images/{own}/file", content=DATA, headers=JSON).status_code == 204
            assert member.post(f"/v2/images/{own}/import", json=body).status_code == 403
        assert stores.in_fast(image_id) is None and stores.in_fast(own) is None


# ---- delayed delete (Glance's scrubber) ------------------------------------------------


def two_copies(stores: Stores, api: httpx.Client, admin: httpx.Client) -> str:
    """An image of ``api``'s project in both stores (copying is for admins)."""
    image_id = create(api)
    assert api.put(f"/v2/images/{image_id}/file", content=DATA, headers=JSON).status_code == 204
    copy_to(admin, image_id, "fast")
    assert stores.in_local(image_id) and stores.in_fast(image_id) == DATA
    return image_id


def test_delayed_delete_keeps_the_data_until_scrub_time(rclone: S3Server, tmp_path: Path) -> None:
    config = stores_config(tmp_path, rclone, delayed_delete=True, scrub_time=3600, reap_interval=0.2)
    proc = ServerProcess(tmp_path / "data", config=config).start()
    try:
        stores = Stores(proc, rclone, config)
        member = stores.token("delayed-owner")
        with stores.client(member) as owner, stores.client() as admin:
            image_id = two_copies(stores, owner, admin)
            assert owner.delete(f"/v2/images/{image_id}").status_code == 204
            assert owner.get(f"/v2/images/{image_id}").status_code == 404  # deleted, for users
            shown = admin.get(f"/v2/images/{image_id}")
            assert shown.status_code == 200 and shown.json()["status"] == "pending_delete"
            assert image_id not in [i["id"] for i in admin.get("/v2/images").json()["images"]]
            assert admin.get(f"/v2/images/{image_id}/file").status_code == 404
            assert admin.delete(f"/v2/images/{image_id}").status_code == 404
            assert admin.patch(f"/v2/images/{image_id}", json=[], headers={
                "Content-Type": "application/openstack-images-v2.1-json-patch"}).status_code == 404
        # A restart (its recovery reaps what is due) keeps what is not due yet.
        proc.kill()
        proc.start()
        assert stores.in_local(image_id) and stores.in_fast(image_id) == DATA
        assert journal(proc.data_dir) == [image_id]
        with stores.client() as admin:
            assert admin.get(f"/v2/images/{image_id}").json()["status"] == "pending_delete"
    finally:
        proc.stop()


def test_delayed_delete_cut_by_kill_9_is_finished_after_scrub_time(rclone: S3Server, tmp_path: Path) -> None:
    """kill -9 right after the DELETE answered (the image pending_delete, its data in two
    stores): after the restart the reaper removes both copies and the record."""
    config = stores_config(tmp_path, rclone, delayed_delete=True, scrub_time=1, reap_interval=0)
    proc = ServerProcess(tmp_path / "data", config=config).start()
    try:
        stores = Stores(proc, rclone, config)
        with stores.client() as admin:
            image_id = two_copies(stores, admin, admin)
            assert admin.delete(f"/v2/images/{image_id}").status_code == 204
        proc.kill()
        assert journal(proc.data_dir) == [image_id]
        assert stores.in_local(image_id) and stores.in_fast(image_id) == DATA
        proc.config["reap_interval"] = 0.2
        proc.start()
        assert wait_for(lambda: not stores.in_local(image_id) and stores.in_fast(image_id) is None)
        assert wait_for(lambda: journal(proc.data_dir) == [])
        with stores.client() as admin:
            assert admin.get(f"/v2/images/{image_id}").status_code == 404
            assert create(admin) != image_id
    finally:
        proc.stop()


# ---- the glance CLI --------------------------------------------------------------------


def test_glance_cli_stores(stores: Stores, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "IMGPROXY_"))}

    def glance(*args: str) -> str:
        r = subprocess.run(["glance", "--os-image-url", stores.proc.url, "--os-auth-token", stores.proc.admin_token,
                            *args], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def flat(table: str) -> str:  # the CLI wraps long values over several table rows
        return "".join(line.strip("|+- ").replace(" ", "") for line in table.splitlines())

    assert '"id":"fast"' in flat(glance("stores-info")) and '"type":"s3"' in flat(glance("stores-info", "--detail"))
    source = tmp_path / "image.raw"
    source.write_bytes(DATA)
    out = glance("image-create", "--name", "cli", "--disk-format", "raw", "--container-format", "bare",
                 "--file", str(source), "--store", "fast")
    image_id = next(line.split("|")[2].strip() for line in out.splitlines() if line.startswith("| id "))
    assert stores.in_fast(image_id) == DATA
    glance("image-import", image_id, "--import-method", "copy-image", "--stores", "local")
    with stores.client() as api:
        assert wait_for(lambda: api.get(f"/v2/images/{image_id}").json().get("stores") == "fast,local")
    glance("image-download", "--file", str(tmp_path / "out"), "--prefer", "local", image_id)
    assert (tmp_path / "out").read_bytes() == DATA
