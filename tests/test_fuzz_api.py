"""Property-based fuzzing of the API's routes against a real server (hypothesis).

Hypothesis builds requests from the API's own vocabulary (routes, parameters, attribute names,
json-patch operations, id spellings) mixed with arbitrary text, numbers and JSON, and sends each
to one imgproxy process. For every request: no 5xx; after a 4xx the images (every field), their
members and tags are exactly as before; and at the end the service still answers.

``IMGPROXY_FUZZ_EXAMPLES`` sets the number of requests (default 300, a few seconds); a longer
campaign raises it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgproxy.tokens import create_token
from tests.server import ServerProcess

EXAMPLES = int(os.environ.get("IMGPROXY_FUZZ_EXAMPLES", "300"))

V21 = "application/openstack-images-v2.1-json-patch"
V20 = "application/openstack-images-v2.0-json-patch"
ATTRIBUTES = [
    "id", "name", "visibility", "protected", "os_hidden", "owner", "disk_format", "container_format",
    "min_disk", "min_ram", "tags", "status", "size", "checksum", "os_hash_value", "locations", "file",
    "self", "created_at", "deleted", "_created_us", "_locations", "_upload_owner", "os_glance_x", "color",
]  # fmt: skip
QUERY_KEYS = [
    "limit", "marker", "sort", "sort_key", "sort_dir", "visibility", "member_status", "tag", "name",
    "status", "size_min", "size_max", "min_disk", "created_at", "updated_at", "protected", "os_hidden",
    "id", "owner", "tags", "_created_us", "color",
]  # fmt: skip
HUGE = "9" * 5000


@dataclass
class World:
    """The fuzzed server and what the requests may name."""

    server: ServerProcess
    admin: httpx.Client
    tokens: list[str]
    image_ids: list[str]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    proc = ServerProcess(tmp_path_factory.mktemp("fuzz") / "data", config={"keepalive_timeout": 30})
    with proc, httpx.Client(base_url=proc.url, headers={"X-Auth-Token": proc.admin_token}, timeout=30) as admin:
        tokens_file = proc.data_dir / "tokens.json"
        owner = create_token(tokens_file, project="fuzz-owner", roles=["member"])
        reader = create_token(tokens_file, project="fuzz-owner", roles=["reader"])
        other = create_token(tokens_file, project="fuzz-other", roles=["member"])
        with httpx.Client(base_url=proc.url, headers={"X-Auth-Token": owner}, timeout=30) as c:
            # Protected, so that a DELETE the fuzzer gets right does not empty the world.
            base = {"protected": True, "disk_format": "raw", "container_format": "bare", "color": "red"}
            active = c.post("/v2/images", json={**base, "name": "active", "visibility": "shared", "tags": ["t"]})
            queued = c.post("/v2/images", json={**base, "name": "queued"})
            assert active.status_code == queued.status_code == 201, (active.text, queued.text)
            ids = [active.json()["id"], queued.json()["id"]]
            data = c.put(f"/v2/images/{ids[0]}/file", content=b"x" * 5000, headers={"Content-Type": "application/octet-stream"})
            assert data.status_code == 204
            assert c.post(f"/v2/images/{ids[0]}/members", json={"member": "fuzz-other"}).status_code == 200
        yield World(proc, admin, [proc.admin_token, owner, reader, other], ids)


def snapshot(world: World) -> Any:
    """Everything a rejected request must leave as it was."""
    images = world.admin.get("/v2/images", params={"limit": 1000, "member_status": "all"}).json()["images"]
    members = {i["id"]: world.admin.get(f"/v2/images/{i['id']}/members").json() for i in images}
    return images, members


# ---- strategies ---------------------------------------------------------------------

text = st.text(max_size=40)
# h11 (the client) refuses header values with surrounding whitespace.
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).map(str.strip)
numbers = st.one_of(st.integers(), st.sampled_from([HUGE, "-" + HUGE, "1e999", "0" * 50 + "1", "+5", " 5", "1_0"]))
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), text,
    st.sampled_from(["public", "private", "shared", "community", "raw", "bare", "qcow2", "active"]),
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.one_of(text, st.sampled_from(ATTRIBUTES)), inner, max_size=4)),
    max_leaves=12,
)


def id_spellings(world: World) -> st.SearchStrategy[str]:
    real = st.sampled_from(world.image_ids)
    return st.one_of(
        real,
        real.map(str.upper),
        real.map(lambda i: "{" + i + "}"),
        real.map(lambda i: "urn:uuid:" + i),
        real.map(lambda i: i.replace("-", "")),
        st.uuids().map(str),
        text,
    )


_patch_path = st.one_of(st.sampled_from(ATTRIBUTES).map(lambda a: "/" + a), text)
patch_ops = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"op": st.sampled_from(["add", "replace", "remove", "move", "test"]), "path": _patch_path},
            optional={"value": json_values},
        ),
        st.builds(lambda op, p, v: {op: p, "value": v}, st.sampled_from(["add", "replace", "remove"]), _patch_path, json_values),
        json_values,
    ),
    max_size=4,
)
path_parts = st.one_of(text, st.sampled_from(["fuzz-other", "fuzz-owner", "t"]))


@st.composite
def requests(
    draw: st.DrawFn, world: World, ids: st.SearchStrategy[str]
) -> tuple[str, str, dict[str, str], list[tuple[str, str]], bytes | None]:
    image = quote(draw(ids), safe="")
    part = quote(draw(path_parts), safe="")
    path = draw(st.sampled_from([
        "/v2/images", f"/v2/images/{image}", f"/v2/images/{image}/file", f"/v2/images/{image}/members",
        f"/v2/images/{image}/members/{part}", f"/v2/images/{image}/tags/{part}",
        f"/v2/images/{image}/actions/deactivate", f"/v2/images/{image}/actions/reactivate",
        f"/v2/images/{image}/locations", f"/v2/cache/{image}", "/v2/schemas/image", "/versions", "/v2.9/images",
        f"/v2/images/{image}/stage", f"/v2/images/{image}/import", f"/v2/images/{image}/tasks", "/v2/tasks",
        "/v2/cache", "/v2/cache/stats", "/v2/info/import", "/v2/info/stores", "/v2/metadefs/namespaces",
        f"/v2/metadefs/namespaces/{part}", f"/v2/metadefs/namespaces/{part}/objects", "/v7/images", "/",
    ]))  # fmt: skip
    method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]))
    headers = {"X-Auth-Token": draw(st.one_of(st.sampled_from(world.tokens), header_text))}
    headers["Content-Type"] = draw(st.one_of(
        st.sampled_from(["application/json", V21, V20, "application/octet-stream", ""]), header_text))  # fmt: skip
    if draw(st.booleans()):
        spec = draw(st.one_of(numbers.map(str), header_text))
        headers["Range"] = draw(st.sampled_from(["bytes={}-", "bytes=0-{}", "bytes=-{}", "{}"])).format(spec).strip()
    query = draw(st.lists(st.tuples(st.one_of(st.sampled_from(QUERY_KEYS), text), st.one_of(text, numbers.map(str))), max_size=4))
    body: bytes | None = None
    kind = draw(st.sampled_from(["none", "json", "patch", "bytes"]))
    if kind == "json":
        body = _dumps(draw(st.one_of(json_values, st.dictionaries(st.sampled_from(ATTRIBUTES), json_values, max_size=6))))
    elif kind == "patch":
        body = _dumps(draw(patch_ops))
    elif kind == "bytes":
        body = draw(st.binary(max_size=200))
    return method, path, headers, query, body


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode()


# ---- the property -------------------------------------------------------------------


def test_fuzzed_requests_never_fail_the_server_and_rejections_change_nothing(world: World) -> None:
    checked = {"requests": 0, "rejected": 0}
    # The state before each request: the fuzzer is the server's only client, so it changes
    # only when a request succeeds (then it is read again).
    state = [snapshot(world)]
    client = httpx.Client(base_url=world.server.url, timeout=30)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(requests(world, id_spellings(world)))
    def run(request: tuple[str, str, dict[str, str], list[tuple[str, str]], bytes | None]) -> None:
        method, path, headers, query, body = request
        r = client.request(method, path, headers=headers, params=query, content=body)
        checked["requests"] += 1
        assert r.status_code < 500, f"{method} {path[:200]} -> {r.status_code}: {r.text[:300]}"
        if r.status_code >= 400:
            checked["rejected"] += 1
            if method != "HEAD":
                assert r.json()["error"]["code"] == r.status_code
            assert snapshot(world) == state[0], f"{method} {path[:200]} -> {r.status_code} changed the state"
        else:
            state[0] = snapshot(world)

    with client:
        run()
    assert world.server.proc is not None and world.server.proc.poll() is None
    assert world.admin.get("/versions").status_code == 200
    assert checked["requests"] >= min(EXAMPLES, 50) and checked["rejected"] > 0
    print(f"fuzz: {checked['requests']} requests, {checked['rejected']} rejected, 0 server errors")
