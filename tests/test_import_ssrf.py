"""web-download against server-side request forgery: real servers behind every spelling and redirect.

The "internal" server is a real nginx on 127.0.0.1 holding ``secret.img``: nothing may ever
reach it (its access log must stay empty). The "outside" server is an in-process server on
127.0.0.2, the one address the imgproxy under test opens (``allowed_networks``); it serves
data and redirects to whatever URL a test names.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable, Iterator

import httpx
import pytest

from imgproxy.urlfilter import ImportFilter, UrlFilter, UrlRefused, normalise_host
from imgproxy.webfetch import WebDownloadError, open_web_download
from tests.import_helpers import new_image, wait_task, web_download
from tests.nginx_fixtures import NginxStore, nginx_store  # noqa: F401 - fixture
from tests.redirect_server import RedirectServer
from tests.server import ServerProcess

pytestmark = pytest.mark.timeout(120)

DATA = os.urandom(200 * 1024 + 3)
OPEN = {"allowed_ports": [], "allowed_networks": ["127.0.0.2/32"]}


@pytest.fixture(scope="module")
def outside() -> Iterator[RedirectServer]:
    server = RedirectServer("127.0.0.2", DATA).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def filtered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("ssrf") / "data", noauth=True,
                         config={"chunk_size": 64 * 1024, "import_filtering_opts": OPEN})
    with proc:
        yield proc


@pytest.fixture
def client(filtered: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=filtered.url, headers={"X-Project-Id": "ssrf"}, timeout=30) as c:
        yield c


def spellings(port: int) -> list[str]:
    """Every way the tests write the internal server's address (all mean 127.0.0.1)."""
    return [
        f"http://127.0.0.1:{port}/secret.img",
        f"http://2130706433:{port}/secret.img",        # decimal
        f"http://0x7f000001:{port}/secret.img",        # hex
        f"http://0x7f.0.0.1:{port}/secret.img",        # hex part
        f"http://0177.0.0.1:{port}/secret.img",        # octal
        f"http://017700000001:{port}/secret.img",      # octal whole
        f"http://127.1:{port}/secret.img",             # short
        f"http://127.0.1:{port}/secret.img",           # short, three parts
        f"http://[::ffff:127.0.0.1]:{port}/secret.img",  # IPv4-mapped IPv6
        f"http://[::ffff:7f00:1]:{port}/secret.img",   # IPv4-mapped, hex groups
        f"http://127.0.0.1.:{port}/secret.img",        # trailing dot
        f"http://localhost:{port}/secret.img",         # a name that resolves to loopback
        f"http://LOCALHOST.:{port}/secret.img",
    ]


# ---- the filter, without servers ---------------------------------------------------------


@pytest.mark.parametrize("host,normal", [
    ("2130706433", "127.0.0.1"), ("0x7f000001", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("127.1", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"), ("127.0.0.1.", "127.0.0.1"), ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
    ("Images.Example.", "images.example"), ("169.254.169.254", "169.254.169.254"), ("0251.0376.0251.0376", "169.254.169.254"),
])
def test_spellings_normalise(host: str, normal: str) -> None:
    assert normalise_host(host) == normal


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/latest/", "http://100.100.100.200/",
    "http://10.0.0.1/", "http://192.168.1.1/", "http://172.16.0.1/", "http://0.0.0.0/", "http://[::1]/",
    "http://[::ffff:169.254.169.254]/", "http://[64:ff9b::a9fe:a9fe]/", "http://[2002:a9fe:a9fe::]/",
    "http://2852039166/", "http://224.0.0.1/", "http://[fe80::1]/",
    "file:///etc/passwd", "ftp://example.com/x", "gopher://127.0.0.1/", "http:///nohost",
])
def test_default_rules_refuse(url: str) -> None:
    with pytest.raises(UrlRefused):
        UrlFilter(ImportFilter(allowed_ports=())).pin(url)


def test_lists_follow_glance() -> None:
    rules = ImportFilter.from_mapping({"allowed_hosts": ["0x7f.1"], "allowed_ports": []})
    # An allowed host is compared in normal form, and an IP literal in it opens that address.
    assert UrlFilter(rules).pin("http://2130706433:8080/x").address == "127.0.0.1"
    with pytest.raises(UrlRefused, match="host"):
        UrlFilter(rules).pin("http://127.0.0.2/x")
    denied = ImportFilter.from_mapping({"disallowed_hosts": ["images.example"], "disallowed_ports": [8080],
                                        "allowed_ports": [], "allowed_schemes": [], "disallowed_schemes": ["https"]})
    for url, rule in (("http://IMAGES.example./x", "host"), ("http://93.184.215.14:8080/x", "port"),
                      ("https://93.184.215.14/x", "scheme")):
        with pytest.raises(UrlRefused, match=rule):
            UrlFilter(denied).pin(url)
    assert UrlFilter(denied).pin("http://93.184.215.14:8081/x").address == "93.184.215.14"
    with pytest.raises(ValueError, match="allowed_ports"):
        ImportFilter.from_mapping({"allowed_ports": [0]})


# ---- the pinned client against real servers ----------------------------------------------


def test_connection_goes_to_the_checked_address(outside: RedirectServer, nginx_store: NginxStore) -> None:  # noqa: F811
    """A name resolved once: a second DNS answer (the rebinding trick) is never used.

    The resolver is injected: no real DNS server here can be told to change its answer.
    """
    nginx_store.put("secret.img", b"secret")
    answers = [["127.0.0.2"], ["127.0.0.1"]]
    calls: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return answers[min(len(calls) - 1, 1)]

    url_filter = UrlFilter(ImportFilter.from_mapping(OPEN), resolver=rebinding)
    before = len(nginx_store.log_lines())

    async def fetch(url: str) -> bytes:
        async with open_web_download(url, url_filter) as body:
            return b"".join([p async for p in body.pieces()])

    got = asyncio.run(fetch(f"http://rebind.test:{outside.port}/data"))
    assert got == DATA and calls == ["rebind.test"]
    assert outside.requests[-1] == ("/data", f"rebind.test:{outside.port}")  # the name went in Host
    # Both answers at once: only the allowed address is used.
    answers[:] = [["127.0.0.1", "127.0.0.2"]]
    calls.clear()
    assert asyncio.run(fetch(f"http://two.test:{outside.port}/data")) == DATA
    # A redirect to the same name is resolved again, and the new (loopback) answer is refused.
    answers[:] = [["127.0.0.2"], ["127.0.0.1"]]
    calls.clear()
    with pytest.raises(WebDownloadError, match="redirect"):
        asyncio.run(fetch(f"http://rebind.test:{outside.port}/r?to=http://rebind.test:{nginx_store.server.port}/secret.img"))
    assert len(nginx_store.log_lines()) == before


# ---- imgproxy end to end -----------------------------------------------------------------


def test_web_download_from_an_allowed_server(client: httpx.Client, outside: RedirectServer) -> None:
    image_id = new_image(client)
    assert web_download(client, image_id, f"{outside.url}/chain/3").status_code == 202
    task, image = wait_task(client, image_id)
    assert task["status"] == "success", task
    assert image["status"] == "active" and image["os_hash_value"] == hashlib.sha512(DATA).hexdigest()
    assert client.get(f"/v2/images/{image_id}/file").content == DATA


def test_every_spelling_of_an_internal_address_is_refused(client: httpx.Client, nginx_store: NginxStore) -> None:  # noqa: F811
    nginx_store.put("secret.img", b"secret")
    before = len(nginx_store.log_lines())
    for url in spellings(nginx_store.server.port):
        image_id = new_image(client)
        r = web_download(client, image_id, url)
        assert r.status_code == 400, (url, r.text)
        assert "does not pass filtering" in r.json()["error"]["message"]
        image = client.get(f"/v2/images/{image_id}").json()
        assert image["status"] == "queued" and "os_glance_import_task" not in image
    assert len(nginx_store.log_lines()) == before


def test_redirects_to_internal_addresses_are_refused(client: httpx.Client, outside: RedirectServer,
                                                     nginx_store: NginxStore) -> None:  # noqa: F811
    nginx_store.put("secret.img", b"secret")
    before = len(nginx_store.log_lines())
    targets = [*spellings(nginx_store.server.port), "http://169.254.169.254/latest/meta-data/",
               "http://[::1]:80/", "file:///etc/passwd"]
    for url in targets:
        image_id = new_image(client)
        assert web_download(client, image_id, f"{outside.url}/r?to={url}").status_code == 202
        task, image = wait_task(client, image_id)
        assert task["status"] == "failure" and "redirect to" in task["message"], (url, task)
        assert image["status"] == "queued" and image["os_glance_failed_import"] == "file"
        assert image["os_glance_importing_to_stores"] == "" and "os_glance_import_task" not in image
    assert len(nginx_store.log_lines()) == before


def test_too_many_redirects(client: httpx.Client, outside: RedirectServer) -> None:
    image_id = new_image(client)
    assert web_download(client, image_id, f"{outside.url}/chain/6").status_code == 202
    task, image = wait_task(client, image_id)
    assert task["status"] == "failure" and "more than 5" in task["message"]
    assert image["status"] == "queued"


def test_default_settings_refuse_loopback(server: ServerProcess, admin: httpx.Client,
                                          outside: RedirectServer) -> None:
    """Without a setting that opens it, even the test's "outside" server is unreachable."""
    image_id = new_image(admin)
    r = web_download(admin, image_id, f"{outside.url}/data")
    assert r.status_code == 400 and "does not pass filtering" in r.json()["error"]["message"]
    r = web_download(admin, image_id, "http://93.184.215.14:8080/x")  # a public address, port not allowed
    assert r.status_code == 400 and "port 8080" in r.json()["error"]["message"]


def test_bad_filter_setting_stops_start(tmp_path: object, server_factory: Callable[..., ServerProcess]) -> None:
    with pytest.raises(RuntimeError, match="import_filtering_opts"):
        server_factory(config={"import_filtering_opts": {"allowed_networks": ["not-a-net"]}})
