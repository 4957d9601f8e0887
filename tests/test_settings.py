"""Settings: TOML file (flat or [imgproxy]), IMGPROXY_* over the file, flags over the environment,
and every bad value refused with its key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgproxy.settings import Settings, SettingsError, load_settings


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "imgproxy.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_embedded_setup() -> None:
    s = load_settings(environ={})
    assert (s.host, s.port, s.auth, s.workers) == ("127.0.0.1", 9292, "tokens", 1)
    assert s.data_dir == Path("imgproxy-data")
    assert s.store_url == (Path("imgproxy-data").resolve() / "images").as_uri()
    assert s.auth_enabled


def test_flat_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'port = 9000\nhost = "0.0.0.0"\nchunk_size = 65536\ncache_high_watermark = 0.7\ncache_low_watermark = 0.5\n')
    s = load_settings(path, environ={})
    assert (s.port, s.host, s.chunk_size, s.cache_high_watermark, s.cache_low_watermark) == (9000, "0.0.0.0", 65536, 0.7, 0.5)


def test_imgproxy_table_and_backend_sections(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[imgproxy]\nport = 9001\nstore = "s3://bucket/images"\n[s3]\nregion = "x"\n')
    s = load_settings(path, environ={})
    assert s.port == 9001 and s.store_url == "s3://bucket/images"


def test_flat_file_with_backend_section(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'port = 9002\n[s3]\nregion = "x"\n')
    s = load_settings(path, environ={})
    assert s.port == 9002 and s.extra["s3"] == {"region": "x"}


def test_env_overrides_file_and_flags_override_env(tmp_path: Path) -> None:
    path = _toml(tmp_path, "port = 9000\nworkers = 2\nprune_interval = 5\n")
    env = {"IMGPROXY_PORT": "9100", "IMGPROXY_PRUNE_INTERVAL": "7.5", "UNRELATED": "x"}
    s = load_settings(path, environ=env)
    assert (s.port, s.workers, s.prune_interval) == (9100, 2, 7.5)
    s = load_settings(path, environ=env, overrides={"port": 9200, "workers": None})
    assert (s.port, s.workers) == (9200, 2)


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = _toml(tmp_path, "port = 9300\n")
    assert load_settings(environ={"IMGPROXY_CONFIG": str(path)}).port == 9300


def test_settings_are_frozen() -> None:
    s = load_settings(environ={})
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]
    assert isinstance(s, Settings)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("port", "0"),
        ("port", "70000"),
        ("port", "http"),
        ("workers", "0"),
        ("auth", "keystone-please"),
        ("image_size_cap", "0"),
        ("max_json_body", "10"),
        ("chunk_size", "1024"),
        ("chunk_size", str(512 * 1024 * 1024)),
        ("cache_max_size", "-1"),
        ("cache_high_watermark", "1.5"),
        ("cache_low_watermark", "0.95"),
        ("prune_interval", "-1"),
        ("prefetch_concurrency", "0"),
        ("upstream_retries", "-1"),
        ("readahead_chunks", "-1"),
        ("readahead_chunks", "1000"),
        ("fill_read_chunks", "-1"),
        ("fill_read_chunks", "65"),
        ("max_fills", "0"),
        ("sendfile_threads", "-1"),
        ("sendfile_threads", "65"),
        ("max_fills", "5000"),
        ("fill_memory", "1024"),
        ("upstream_timeout", "soon"),
        ("lmdb_map_size", "1024"),
        ("log_level", "loud"),
        ("store", "just-a-path"),
    ],
)
def test_bad_env_value_names_key(key: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(environ={f"IMGPROXY_{key.upper()}": value})
    assert info.value.key == key
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('port = "x"\n', "port"),
        ("port = true\n", "port"),
        ("host = 5\n", "host"),
        ("colour = 1\n", "colour"),
        ("port = \n", "config"),
        ("[imgproxy]\nchunk_size = 12\n", "chunk_size"),
        ('data_dir = ""\n', "data_dir"),
    ],
)
def test_bad_file_value_names_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(_toml(tmp_path, text), environ={})
    assert info.value.key == key


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(tmp_path / "absent.toml", environ={})
    assert info.value.key == "config"


def test_unknown_override_names_key() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(environ={}, overrides={"colour": "red"})
    assert info.value.key == "colour"


# ---- several stores ([stores.NAME] tables) --------------------------------------------------

_TWO_STORES = """
default_store = "fast"
[stores.local]
url = "file:///srv/images"
description = "Local disk"
[stores.fast]
url = "s3://bucket/images"
endpoint = "http://127.0.0.1:9000"
allow_http = true
access_key = "ak"
weight = 10
"""


def test_named_stores(tmp_path: Path) -> None:
    s = load_settings(_toml(tmp_path, _TWO_STORES), environ={"IMGPROXY_STORES_FAST_SECRET_KEY": "sk-from-env"})
    assert list(s.stores) == ["local", "fast"] and s.default_store == "fast"
    assert s.store_url == "s3://bucket/images"
    local, fast = s.stores["local"], s.stores["fast"]
    assert (local.kind, local.description, local.weight) == ("file", "Local disk", 0)
    assert (fast.kind, fast.weight) == ("s3", 10)
    assert fast.options == {"endpoint": "http://127.0.0.1:9000", "allow_http": True, "access_key": "ak",
                            "secret_key": "sk-from-env"}
    assert "sk-from-env" not in repr(s)


def test_one_store_shorthand_is_called_by_its_kind(tmp_path: Path) -> None:
    s = load_settings(environ={})
    assert list(s.stores) == ["file"] and s.default_store == "file"
    assert s.stores["file"].url == s.store_url
    path = _toml(tmp_path, 'store = "s3://bucket/p"\n[s3]\naccess_key = "ak"\n')
    s = load_settings(path, environ={"IMGPROXY_S3_SECRET_KEY": "sk"})
    assert list(s.stores) == ["s3"] and s.stores["s3"].options == {"access_key": "ak", "secret_key": "sk"}


def test_one_named_store_is_the_default(tmp_path: Path) -> None:
    s = load_settings(_toml(tmp_path, '[stores.only]\nurl = "file:///srv/x"\n'), environ={})
    assert s.default_store == "only"


def test_store_env_picks_the_longest_store_name(tmp_path: Path) -> None:
    text = ('default_store = "a"\n[stores.a]\nurl = "s3://bkt/x"\naccess_key = "k"\n'
            '[stores.a_b]\nurl = "s3://bkt/y"\naccess_key = "k"\n')
    s = load_settings(_toml(tmp_path, text), environ={"IMGPROXY_STORES_A_B_SECRET_KEY": "1", "IMGPROXY_STORES_A_SECRET_KEY": "2"})
    assert s.stores["a_b"].options["secret_key"] == "1" and s.stores["a"].options["secret_key"] == "2"


@pytest.mark.parametrize(
    ("text", "env", "key"),
    [
        ('store = "file:///x"\n[stores.a]\nurl = "file:///y"\n', {}, "store"),
        ('[stores.a]\nurl = "file:///y"\n[stores.b]\nurl = "file:///z"\n', {}, "default_store"),
        ('default_store = "c"\n[stores.a]\nurl = "file:///y"\n', {}, "default_store"),
        ('default_store = "s3"\n', {}, "default_store"),
        ('[stores.a]\nurl = "nowhere"\n', {}, "stores.a.url"),
        ('[stores.a]\ndescription = "no url"\n', {}, "stores.a.url"),
        ('[stores.a]\nurl = "ftp://host/x"\n', {}, "stores.a"),
        ('[stores.a]\nurl = "file://relative"\n', {}, "stores.a"),
        ('[stores.a]\nurl = "s3://bkt/p"\nregion = 5\n', {}, "stores.a"),
        ('[stores.a]\nurl = "s3://bkt/p"\naccess_key = "only-half"\n', {}, "stores.a"),
        ('[stores.a]\nurl = "swift://c"\n', {}, "stores.a"),
        ('[stores.a]\nurl = "file:///y"\nweight = "heavy"\n', {}, "stores.a.weight"),
        ('[stores."a b"]\nurl = "file:///y"\n', {}, "stores.a b"),
        ('[stores.a]\nurl = "file:///y"\n', {"IMGPROXY_STORES_B_SECRET_KEY": "x"}, "IMGPROXY_STORES_B_SECRET_KEY"),
        ('port = 9000\n', {"IMGPROXY_STORES_B_SECRET_KEY": "x"}, "IMGPROXY_STORES_B_SECRET_KEY"),
        ('store = "s3://bkt/p"\n[s3]\nregion = 5\n', {}, "s3"),
        ('store = "s3://-bad-/p"\n', {}, "store"),
        ("stores = 5\n", {}, "stores"),
    ],
)
def test_bad_store_settings_name_the_key(tmp_path: Path, text: str, env: dict[str, str], key: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(_toml(tmp_path, text), environ=env)
    assert info.value.key == key, info.value


def test_store_error_never_shows_a_secret(tmp_path: Path) -> None:
    text = '[stores.a]\nurl = "s3://bkt/p"\nsecret_key = "very-secret-42"\n'  # no access_key: refused
    with pytest.raises(SettingsError) as info:
        load_settings(_toml(tmp_path, text), environ={})
    assert info.value.key == "stores.a" and "access_key" in str(info.value)
    assert "very-secret-42" not in str(info.value)
