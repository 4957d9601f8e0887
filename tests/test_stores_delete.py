"""Deleting one store's copy of an image: Glance's ``DELETE /v2/stores/{store_id}/{image_id}``.

Glance's answers (``glance/api/v2/images.py`` ``delete_from_store``), in its order: 409 for a
store not configured, 404 for an image the caller cannot see, 403 unless admin, 409 unless
active, 403 for the image's last copy, 404 when the store holds no copy; 204 on success.
The status matrix runs against three file stores; an S3 bucket on rclone shows the object go,
through the glance CLI and openstacksdk. Store data goes through the delete journal, so a
store that refuses the delete keeps an entry the reaper finishes later.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from imgproxy.tokens import create_token
from tests.helpers import drop_from_cache, is_json_error, wait_for
from tests.s3_fixtures import S3Server
from tests.server import ServerProcess
from tests.test_deletes import block_store_delete, journal, unblock
from tests.test_openstacksdk import connect_token
from tests.test_stores_e2e import DATA, JSON, Stores, copy_to, create, rclone, stores  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(180)

STORES = ("a", "b", "c")


def file_stores(root: Path, **more: object) -> dict[str, object]:
    """Three file stores; store ``x`` keeps image files in ``root/x/images``."""
    return {"chunk_size": 64 * 1024, "prefetch_interval": 0, "default_store": "a",
            "stores": {name: {"url": (root / name / "images").as_uri()} for name in STORES}, **more}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("three-stores")
    with ServerProcess(root / "data", config=file_stores(root)) as proc:
        yield proc


def stored(proc: ServerProcess, store: str, image_id: str) -> Path:
    return Path(str(proc.config["stores"][store]["url"]).removeprefix("file://")) / image_id  # type: ignore[index]


def client(proc: ServerProcess, token: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=proc.url, headers={"X-Auth-Token": token or proc.admin_token}, timeout=30)


def member_client(proc: ServerProcess, project: str) -> httpx.Client:
    token = create_token(proc.data_dir / "tokens.json", project=project, roles=["member"])
    # The server notices a new token when it next re-reads the tokens file.
    assert wait_for(lambda: httpx.get(f"{proc.url}/v2/schemas/member", headers={"X-Auth-Token": token}).status_code
                    != 401)
    return client(proc, token)


def in_stores(api: httpx.Client, *stores: str, data: bytes = DATA) -> str:
    """An active image with a copy in each of ``stores`` (the first gets the upload)."""
    image_id = create(api)
    r = api.put(f"/v2/images/{image_id}/file", content=data, headers={**JSON, "X-Image-Meta-Store": stores[0]})
    assert r.status_code == 204, r.text
    if len(stores) > 1:
        copy_to(api, image_id, *stores[1:])
    assert api.get(f"/v2/images/{image_id}").json()["stores"] == ",".join(stores)
    return image_id


def delete_copy(api: httpx.Client, store: str, image_id: str) -> httpx.Response:
    return api.delete(f"/v2/stores/{store}/{image_id}")


def test_delete_one_copy(server: ServerProcess) -> None:
    with client(server) as api:
        image_id = in_stores(api, "a", "b", "c")
        assert all(stored(server, s, image_id).exists() for s in STORES)

        r = delete_copy(api, "b", image_id)
        assert r.status_code == 204 and r.content == b""
        image = api.get(f"/v2/images/{image_id}").json()
        assert image["stores"] == "a,c" and image["status"] == "active"
        assert [loc["metadata"]["store"] for loc in api.get(f"/v2/images/{image_id}/locations").json()] == ["a", "c"]
        assert wait_for(lambda: not stored(server, "b", image_id).exists())
        assert stored(server, "a", image_id).exists() and stored(server, "c", image_id).exists()
        assert wait_for(lambda: journal(server.data_dir) == [])

        # The image reads from its other copies (the cache dropped, so from a store).
        drop_from_cache(api, image_id)
        assert api.get(f"/v2/images/{image_id}/file?prefer=c").content == DATA

        # Deleting the image takes the copies that are left.
        assert api.delete(f"/v2/images/{image_id}").status_code == 204
        assert wait_for(lambda: not any(stored(server, s, image_id).exists() for s in STORES))


def test_refusals_in_glance_order(server: ServerProcess) -> None:
    with client(server) as api:
        two = in_stores(api, "a", "b")
        one = in_stores(api, "a")
        queued = create(api)
        cases = [
            ("nowhere", two, 409),  # not a configured store (before the image is looked up)
            ("b", str(uuid.uuid4()), 404),  # no such image
            ("b", "not-an-id", 404),
            ("b", queued, 409),  # not active
            ("a", one, 403),  # its last copy
            ("b", one, 403),  # one copy: refused as the last, whichever store is named
            ("c", two, 404),  # two copies, none in c
        ]
        for store, image_id, status in cases:
            error = is_json_error(delete_copy(api, store, image_id), status)
            assert status != 409 or "store" in error["message"] or "active" in error["message"], (store, error)
        assert "only store" in is_json_error(delete_copy(api, "a", one), 403)["message"]
        assert "not stored in store c" in is_json_error(delete_copy(api, "c", two), 404)["message"]

        assert api.post(f"/v2/images/{two}/actions/deactivate").status_code == 204
        is_json_error(delete_copy(api, "b", two), 409)
        assert api.post(f"/v2/images/{two}/actions/reactivate").status_code == 204

        # Nothing changed: every copy is still there.
        assert api.get(f"/v2/images/{two}").json()["stores"] == "a,b"
        assert api.get(f"/v2/images/{one}").json()["stores"] == "a"
        assert stored(server, "b", two).exists() and stored(server, "a", one).exists()


def test_only_admins_delete_a_copy(server: ServerProcess) -> None:
    """Glance's ``delete_image_location`` default is ``role:admin``: an owner may not; an image
    the caller cannot see is 404 (before the policy)."""
    project = f"owner-{uuid.uuid4().hex[:6]}"
    with client(server) as admin, member_client(server, project) as owner, \
            member_client(server, f"other-{uuid.uuid4().hex[:6]}") as other:
        image_id = create(owner)
        assert owner.put(f"/v2/images/{image_id}/file", content=DATA, headers=JSON).status_code == 204
        copy_to(admin, image_id, "b")
        is_json_error(delete_copy(owner, "b", image_id), 403)
        is_json_error(delete_copy(other, "b", image_id), 404)
        assert owner.get(f"/v2/images/{image_id}").json()["stores"] == "a,b"
        assert delete_copy(admin, "b", image_id).status_code == 204
        assert owner.get(f"/v2/images/{image_id}").json()["stores"] == "a"


def test_store_that_refuses_is_reaped_later(tmp_path: Path) -> None:
    """The store's delete fails (the file replaced by a non-empty directory, which unlink
    refuses even for root): the location is gone, the journal keeps the copy's entry, and
    the reaper removes the data once the store works again."""
    root = tmp_path / "stores"
    with ServerProcess(tmp_path / "data", config=file_stores(root, reap_interval=1)) as proc, client(proc) as api:
        image_id = in_stores(api, "a", "b")
        data = block_store_delete(root / "b", image_id)
        assert delete_copy(api, "b", image_id).status_code == 204
        assert api.get(f"/v2/images/{image_id}").json()["stores"] == "a"
        assert wait_for(lambda: "could not delete data of" in proc.log())
        time.sleep(1.5)  # reaper passes run meanwhile, and fail like the first attempt
        assert journal(proc.data_dir) == [f"{image_id}/b"]
        assert api.get(f"/v2/images/{image_id}/file").content == DATA  # the image lives on

        path = unblock(root / "b", image_id, data)
        assert wait_for(lambda: not path.exists()), "a reaper pass should remove the copy"
        assert wait_for(lambda: journal(proc.data_dir) == [])
        assert stored(proc, "a", image_id).exists()


def test_delayed_delete_keeps_the_copy_until_scrub_time(tmp_path: Path) -> None:
    root = tmp_path / "stores"
    config = file_stores(root, delayed_delete=True, scrub_time=3600, reap_interval=0.2)
    with ServerProcess(tmp_path / "data", config=config) as proc, client(proc) as api:
        image_id = in_stores(api, "a", "b")
        assert delete_copy(api, "b", image_id).status_code == 204
        assert api.get(f"/v2/images/{image_id}").json()["stores"] == "a"
        time.sleep(0.5)  # reaper passes run meanwhile; the entry is not due
        assert stored(proc, "b", image_id).exists()
        assert journal(proc.data_dir) == [f"{image_id}/b"]
        # Copying it back to "b" now would write the object the reaper is due to delete.
        r = api.post(f"/v2/images/{image_id}/import", json={"method": {"name": "copy-image"}, "stores": ["b"]})
        assert "still being deleted" in is_json_error(r, 409)["message"]
        assert api.get(f"/v2/images/{image_id}").json()["stores"] == "a"


# ---- an object store, through the clients ------------------------------------------------


def test_glance_cli_and_openstacksdk_delete_from_s3(stores: Stores, tmp_path: Path) -> None:  # noqa: F811
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "IMGPROXY_"))}

    def stores_delete(store: str, image_id: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["glance", "--os-image-url", stores.proc.url, "--os-auth-token", stores.proc.admin_token,
                               "stores-delete", "--store", store, image_id], capture_output=True, text=True, env=env,
                              timeout=120, cwd=tmp_path, stdin=subprocess.DEVNULL)

    with stores.client() as api:
        by_cli = in_stores(api, "local", "fast")
        by_sdk = in_stores(api, "local", "fast", data=DATA[::-1])
    assert stores.in_fast(by_cli) == DATA

    r = stores_delete("fast", by_cli)
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: stores.in_fast(by_cli) is None)
    assert stores.in_local(by_cli)

    conn = connect_token(stores.proc.url, stores.proc.admin_token)
    conn.image.delete_image(by_sdk, store="fast", ignore_missing=False)
    assert wait_for(lambda: stores.in_fast(by_sdk) is None)
    with stores.client() as api:
        assert [api.get(f"/v2/images/{i}").json()["stores"] for i in (by_cli, by_sdk)] == ["local", "local"]

    # The CLI shows why a refused delete is refused; the last copy stays.
    r = stores_delete("local", by_cli)
    assert r.returncode != 0 and "from the only store containing it" in r.stderr, r.stderr
    assert stores.in_local(by_cli)
