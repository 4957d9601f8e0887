"""openstacksdk against imgproxy, as the Glance anchor invokes it: a token with ``admin_token`` auth,
and ``auth_type="none"`` against a ``--noauth`` server."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import openstack
import pytest
from openstack import exceptions

from tests.server import ServerProcess

PAYLOAD = os.urandom(200 * 1024 + 5)


def connect_token(url: str, token: str) -> "openstack.connection.Connection":
    return openstack.connect(
        auth_type="admin_token", auth={"token": token, "endpoint": url}, image_endpoint_override=url
    )


@pytest.fixture
def payload_file(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(PAYLOAD)
    return path


def _name() -> str:
    return f"sdk-{uuid.uuid4().hex[:10]}"


def lifecycle(conn: "openstack.connection.Connection", payload_file: Path, tmp_path: Path) -> None:
    """create from a file, list, get, update, tag, download (verified), deactivate/reactivate, delete."""
    name = _name()
    created = conn.image.create_image(
        name=name, filename=str(payload_file), disk_format="raw", container_format="bare", os_distro="debian"
    )
    image = conn.image.get_image(created.id)
    assert image.status == "active" and image.name == name
    assert image.size == len(PAYLOAD)
    assert image.checksum == hashlib.md5(PAYLOAD).hexdigest()
    assert image.hash_algo == "sha512" and image.hash_value == hashlib.sha512(PAYLOAD).hexdigest()
    assert image.os_distro == "debian"  # a known attribute on the SDK resource

    assert image.id in {i.id for i in conn.image.images()}
    assert image.id in {i.id for i in conn.image.images(name=name)}
    assert image.id not in {i.id for i in conn.image.images(name=name + "-nope")}

    image = conn.image.update_image(image, name=name + "-v2", hw_disk_bus="scsi")
    assert image.name == name + "-v2" and image.hw_disk_bus == "scsi"
    conn.image.add_tag(image, "golden")
    assert "golden" in conn.image.get_image(image.id).tags
    conn.image.remove_tag(image, "golden")
    assert "golden" not in conn.image.get_image(image.id).tags

    # The SDK checks the md5 of what it received against the image's checksum.
    assert conn.image.download_image(image).content == PAYLOAD
    target = tmp_path / "out.img"
    conn.image.download_image(image, output=str(target), chunk_size=64 * 1024)
    assert target.read_bytes() == PAYLOAD

    conn.image.deactivate_image(image)
    assert conn.image.get_image(image.id).status == "deactivated"
    conn.image.reactivate_image(image)
    assert conn.image.get_image(image.id).status == "active"

    conn.image.delete_image(image)
    with pytest.raises(exceptions.NotFoundException):
        conn.image.get_image(image.id)
    assert conn.image.find_image(image.id) is None


def test_token_lifecycle(server: ServerProcess, payload_file: Path, tmp_path: Path) -> None:
    lifecycle(connect_token(server.url, server.admin_token), payload_file, tmp_path)


def test_noauth_lifecycle(server_factory: Callable[..., ServerProcess], payload_file: Path, tmp_path: Path) -> None:
    proc = server_factory(noauth=True)
    conn = openstack.connect(auth_type="none", image_endpoint_override=proc.url)
    lifecycle(conn, payload_file, tmp_path)


def test_cloud_layer_create_image_waits_for_active(server: ServerProcess, payload_file: Path) -> None:
    conn = connect_token(server.url, server.admin_token)
    name = _name()
    image = conn.create_image(
        name, filename=str(payload_file), disk_format="raw", container_format="bare", wait=True, timeout=60
    )
    assert image.status == "active" and image.size == len(PAYLOAD)
    assert conn.get_image(name).id == image.id
    assert conn.delete_image(image.id, wait=True, timeout=60)


def test_member_token_sees_own_images_only(server: ServerProcess, make_token: Callable[..., str], payload_file: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    a = connect_token(server.url, make_token(f"sdk-a-{tag}"))
    b = connect_token(server.url, make_token(f"sdk-b-{tag}"))
    image = a.image.create_image(name=_name(), filename=str(payload_file), disk_format="raw", container_format="bare")
    assert image.id not in {i.id for i in b.image.images()}
    with pytest.raises(exceptions.NotFoundException):
        b.image.get_image(image.id)
    with pytest.raises(exceptions.ForbiddenException):
        a.image.update_image(image, visibility="public")
    a.image.delete_image(image)


def test_bad_token_is_unauthorized(server: ServerProcess) -> None:
    conn = connect_token(server.url, "not-a-token")
    with pytest.raises(exceptions.HttpException) as info:
        list(conn.image.images())
    assert info.value.status_code == 401


def test_share_with_another_project_and_page(
    server: ServerProcess, make_token: Callable[..., str], payload_file: Path
) -> None:
    """Owner shares an image; the other project sees it only once it accepts; paging walks all."""
    owner_project, other_project = f"sdk-own-{uuid.uuid4().hex[:6]}", f"sdk-oth-{uuid.uuid4().hex[:6]}"
    owner = connect_token(server.url, make_token(owner_project, "member"))
    other = connect_token(server.url, make_token(other_project, "member"))

    image = owner.image.create_image(
        name=_name(), filename=str(payload_file), disk_format="raw", container_format="bare", visibility="shared"
    )
    with pytest.raises(exceptions.NotFoundException):
        other.image.get_image(image.id)

    member = owner.image.add_member(image, member_id=other_project)
    assert member.status == "pending"
    assert [m.member_id for m in owner.image.members(image)] == [other_project]
    # Pending: the member may read it by id, but it is not in its default listing yet.
    assert other.image.get_image(image.id).id == image.id
    assert image.id not in {i.id for i in other.image.images()}

    other.image.update_member(other_project, image, status="accepted")
    assert owner.image.get_member(other_project, image).status == "accepted"
    assert image.id in {i.id for i in other.image.images()}
    assert other.image.download_image(image).content == PAYLOAD

    owner.image.remove_member(other_project, image)
    with pytest.raises(exceptions.NotFoundException):
        other.image.get_image(image.id)

    # Paging: the SDK follows `next` links page by page; every image comes back once.
    names = [owner.image.create_image(name=_name(), disk_format="raw", container_format="bare").name for _ in range(5)]
    listed = [i.name for i in owner.image.images(limit=2, owner=owner_project)]
    assert sorted(n for n in listed if n in names) == sorted(names)
    assert len(listed) == len(set(listed)) == 6
