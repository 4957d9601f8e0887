"""The real python-glanceclient against imgproxy: the ``glance`` CLI as a subprocess and the library.

Every call goes through the client exactly as an operator would make it, so what is asserted is what
the client printed or returned (including its own download verification of os_hash_value/checksum).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.server import ServerProcess
from tests.helpers import unique

PAYLOAD = os.urandom(300 * 1024 + 17)  # not a multiple of any chunk size


def parse_table(text: str) -> dict[str, str]:
    """``| Property | Value |`` tables: wrapped values (empty key cell) are joined to the row above."""
    props: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|", 1)]
        if len(cells) != 2 or cells[0] in ("Property", "ID", "Image ID"):
            continue
        key, value = cells
        if key:
            props[key], last = value, key
        elif last:
            props[last] += value
    return props


def parse_rows(text: str) -> list[list[str]]:
    """Rows of a listing table (header row dropped)."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]
    return rows[1:]


def _close_stdin() -> None:
    """In the child: a closed (not /dev/null) stdin, or image-create without --file uploads stdin."""
    os.close(0)


@pytest.fixture
def glance(server: ServerProcess, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``glance(*args, token=admin)``: run the CLI; fails the test on a non-zero exit unless check=False."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "IMGPROXY_"))}

    def run(*args: str, token: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["glance", "--os-image-url", server.url, "--os-auth-token", token or server.admin_token, *args]
        r = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path, preexec_fn=_close_stdin
        )
        if check:
            assert r.returncode == 0, f"{' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r

    return run


@pytest.fixture
def payload_file(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(PAYLOAD)
    return path


# --- the glance CLI -------------------------------------------------------------------------------


def test_cli_create_with_file_show_download_delete(glance: Callable[..., subprocess.CompletedProcess[str]], payload_file: Path, tmp_path: Path) -> None:
    name = unique("gc")
    out = glance("image-create", "--name", name, "--disk-format", "raw", "--container-format", "bare",
                 "--file", str(payload_file), "--property", "os_distro=debian").stdout
    props = parse_table(out)
    assert props["status"] == "active" and props["name"] == name
    assert props["size"] == str(len(PAYLOAD))
    assert props["checksum"] == hashlib.md5(PAYLOAD).hexdigest()
    assert props["os_hash_algo"] == "sha512" and props["os_hash_value"] == hashlib.sha512(PAYLOAD).hexdigest()
    assert props["os_distro"] == "debian"
    iid = props["id"]
    assert parse_table(glance("image-show", iid).stdout)["disk_format"] == "raw"
    target = tmp_path / "out.img"
    glance("image-download", "--file", str(target), iid)  # the client verifies the hash while writing
    assert target.read_bytes() == PAYLOAD
    glance("image-delete", iid)
    r = glance("image-show", iid, check=False)
    assert r.returncode != 0 and "No image found" in r.stderr


def test_cli_create_then_upload(glance: Callable[..., subprocess.CompletedProcess[str]], payload_file: Path, tmp_path: Path) -> None:
    props = parse_table(glance("image-create", "--name", unique("gc"), "--disk-format", "raw", "--container-format", "bare").stdout)
    assert props["status"] == "queued"
    iid = props["id"]
    glance("image-upload", "--file", str(payload_file), iid)
    props = parse_table(glance("image-show", iid).stdout)
    assert props["status"] == "active" and props["size"] == str(len(PAYLOAD))
    target = tmp_path / "out.img"
    glance("image-download", "--file", str(target), iid)
    assert target.read_bytes() == PAYLOAD


def test_cli_list_filters_and_paging(glance: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    marker = uuid.uuid4().hex[:10]
    ids = set()
    for _ in range(3):
        out = glance("image-create", "--name", unique("gc"), "--disk-format", "raw", "--container-format", "bare",
                     "--property", f"batch={marker}").stdout
        ids.add(parse_table(out)["id"])
    out = glance("image-list", "--property-filter", f"batch={marker}", "--page-size", "1").stdout
    assert {row[0] for row in parse_rows(out)} == ids  # the client followed the `next` links
    out = glance("image-list", "--property-filter", f"batch={marker}", "--limit", "2", "--page-size", "1").stdout
    rows = parse_rows(out)
    assert len(rows) == 2 and {r[0] for r in rows} <= ids
    out = glance("image-list", "--property-filter", "batch=no-such-batch").stdout
    assert parse_rows(out) == []


def test_cli_update_properties_and_tags(glance: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    iid = parse_table(glance("image-create", "--name", unique("gc"), "--disk-format", "raw", "--container-format", "bare",
                             "--property", "gone=soon").stdout)["id"]
    props = parse_table(glance("image-update", iid, "--name", "renamed", "--property", "hw_disk_bus=scsi",
                               "--remove-property", "gone", "--min-disk", "2").stdout)
    assert props["name"] == "renamed" and props["hw_disk_bus"] == "scsi" and props["min_disk"] == "2"
    assert "gone" not in props
    glance("image-tag-update", iid, "golden")
    glance("image-tag-update", iid, "debian")
    tags = parse_table(glance("image-show", iid).stdout)["tags"]
    assert "golden" in tags and "debian" in tags
    glance("image-tag-delete", iid, "golden")
    tags = parse_table(glance("image-show", iid).stdout)["tags"]
    assert "golden" not in tags and "debian" in tags
    out = glance("image-list", "--tag", "debian").stdout
    assert iid in {row[0] for row in parse_rows(out)}


def test_cli_share_with_another_project(glance: Callable[..., subprocess.CompletedProcess[str]], make_token: Callable[..., str], payload_file: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    owner, other = make_token(f"gc-owner-{tag}"), make_token(f"gc-other-{tag}")
    iid = parse_table(glance("image-create", "--name", unique("gc"), "--disk-format", "raw", "--container-format", "bare",
                             "--visibility", "shared", "--file", str(payload_file), token=owner).stdout)["id"]
    assert glance("image-show", iid, token=other, check=False).returncode != 0
    out = glance("member-create", iid, f"gc-other-{tag}", token=owner).stdout
    assert "pending" in out
    glance("member-update", iid, f"gc-other-{tag}", "accepted", token=other)
    out = glance("member-list", "--image-id", iid, token=owner).stdout
    assert [r[1:] for r in parse_rows(out)] == [[f"gc-other-{tag}", "accepted"]]
    assert parse_table(glance("image-show", iid, token=other).stdout)["status"] == "active"
    assert iid in {row[0] for row in parse_rows(glance("image-list", token=other).stdout)}
    glance("member-delete", iid, f"gc-other-{tag}", token=owner)
    assert glance("image-show", iid, token=other, check=False).returncode != 0


def test_cli_deactivate_reactivate(glance: Callable[..., subprocess.CompletedProcess[str]], make_token: Callable[..., str], payload_file: Path, tmp_path: Path) -> None:
    member = make_token(f"gc-deact-{uuid.uuid4().hex[:8]}")
    iid = parse_table(glance("image-create", "--name", unique("gc"), "--disk-format", "raw", "--container-format", "bare",
                             "--file", str(payload_file), token=member).stdout)["id"]
    glance("image-deactivate", iid)
    assert parse_table(glance("image-show", iid, token=member).stdout)["status"] == "deactivated"
    r = glance("image-download", "--file", str(tmp_path / "x"), iid, token=member, check=False)
    assert r.returncode != 0 and "deactivated" in r.stderr
    glance("image-reactivate", iid)
    assert parse_table(glance("image-show", iid).stdout)["status"] == "active"
    glance("image-download", "--file", str(tmp_path / "y"), iid, token=member)
    assert (tmp_path / "y").read_bytes() == PAYLOAD


def test_cli_import_and_stores_info(glance: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    assert "import-methods" in parse_table(glance("import-info").stdout)
    assert "stores" in parse_table(glance("stores-info").stdout)


def test_cli_bad_token(glance: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    r = glance("image-list", token="not-a-token", check=False)
    assert r.returncode != 0 and "Invalid OpenStack Identity credentials" in r.stderr  # glanceclient's 401 text


# --- the library ----------------------------------------------------------------------------------


@pytest.fixture
def gclient(server: ServerProcess) -> Iterator[Callable[..., object]]:
    import glanceclient

    def make(token: str | None = None) -> object:
        return glanceclient.Client("2", endpoint=server.url, token=token or server.admin_token)

    yield make


def test_library_lifecycle(gclient: Callable[..., object], make_token: Callable[..., str]) -> None:
    import io

    from glanceclient import exc

    c = gclient()
    marker = uuid.uuid4().hex[:10]
    image = c.images.create(name=unique("gc"), disk_format="raw", container_format="bare", batch=marker)
    assert image.status == "queued" and image.batch == marker
    c.images.upload(image.id, io.BytesIO(PAYLOAD), image_size=len(PAYLOAD))
    image = c.images.get(image.id)
    assert image.status == "active" and image.size == len(PAYLOAD)
    assert image.os_hash_value == hashlib.sha512(PAYLOAD).hexdigest()
    assert b"".join(c.images.data(image.id)) == PAYLOAD  # verified against os_hash_value by the client

    second = c.images.create(name=unique("gc"), disk_format="raw", container_format="bare", batch=marker)
    found = list(c.images.list(filters={"batch": marker}, page_size=1))
    assert {i.id for i in found} == {image.id, second.id}
    assert len(list(c.images.list(filters={"batch": marker}, limit=1))) == 1

    updated = c.images.update(image.id, name="lib-renamed", os_distro="ubuntu")
    assert updated.name == "lib-renamed" and updated.os_distro == "ubuntu"
    updated = c.images.update(image.id, remove_props=["os_distro"])
    assert "os_distro" not in updated
    c.image_tags.update(image.id, "lib-tag")
    assert "lib-tag" in c.images.get(image.id).tags
    c.image_tags.delete(image.id, "lib-tag")
    assert "lib-tag" not in c.images.get(image.id).tags

    c.images.deactivate(image.id)
    assert c.images.get(image.id).status == "deactivated"
    c.images.reactivate(image.id)
    assert c.images.get(image.id).status == "active"

    assert "import-methods" in c.images.get_import_info()
    assert c.images.get_stores_info()["stores"]

    c.images.delete(image.id)
    c.images.delete(second.id)
    with pytest.raises(exc.HTTPNotFound):
        c.images.get(image.id)


def test_library_sharing(gclient: Callable[..., object], make_token: Callable[..., str]) -> None:
    import io

    from glanceclient import exc

    tag = uuid.uuid4().hex[:8]
    owner_project, other_project = f"lib-owner-{tag}", f"lib-other-{tag}"
    owner, other = gclient(make_token(owner_project)), gclient(make_token(other_project))
    image = owner.images.create(name=unique("gc"), disk_format="raw", container_format="bare", visibility="shared")
    owner.images.upload(image.id, io.BytesIO(PAYLOAD))
    with pytest.raises(exc.HTTPNotFound):
        other.images.get(image.id)
    member = owner.image_members.create(image.id, other_project)
    assert member.status == "pending"
    other.image_members.update(image.id, other_project, "accepted")
    assert [(m.member_id, m.status) for m in owner.image_members.list(image.id)] == [(other_project, "accepted")]
    assert image.id in {i.id for i in other.images.list()}
    assert b"".join(other.images.data(image.id)) == PAYLOAD
    with pytest.raises(exc.HTTPForbidden):
        other.images.update(image.id, name="not-yours")


def test_corrupt_store_bytes_never_reach_the_library_as_a_good_download(
    gclient: Callable[..., object], server: ServerProcess, admin: object
) -> None:
    """The store's copy goes bad and the cache has none: the client gets an error, never a
    complete download of wrong bytes (the library's own md5/sha512 check is the second net)."""
    import io

    # Bytes of its own: chunks shared with another image would stay cached after the eviction.
    payload = os.urandom(len(PAYLOAD))
    c = gclient()
    image = c.images.create(name=unique("gc"), disk_format="raw", container_format="bare")
    c.images.upload(image.id, io.BytesIO(payload))
    got = c.images.get(image.id)
    assert got.checksum == hashlib.md5(payload).hexdigest()
    assert got.os_hash_value == hashlib.sha512(payload).hexdigest()
    assert b"".join(c.images.data(image.id)) == payload

    stored = server.data_dir / "images" / image.id
    with stored.open("r+b") as f:
        f.seek(len(payload) // 2)
        byte = f.read(1)
        f.seek(len(payload) // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert admin.delete(f"/v2/cache/{image.id}").status_code == 204  # type: ignore[attr-defined]
    # An HTTP error when the bad chunk is the first one sent (verified before any byte of
    # it leaves); otherwise a cut, or the library's checksum mismatch: both IOErrors.
    from glanceclient import exc

    with pytest.raises((OSError, exc.HTTPException)):
        b"".join(c.images.data(image.id))
