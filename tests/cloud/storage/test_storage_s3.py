"""cloud.storage.urls, cloud.storage.settings, cloud.storage.s3client and cloud.storage.store, against SeaweedFS."""

from __future__ import annotations

import logging
import os
import socket

import pytest

from cloud.storage import s3client
from cloud.storage.errors import StorageError, UnsafeKeyError
from cloud.storage.settings import StorageSettings, to_settings
from cloud.storage.store import LocalStorage, S3Storage, open_storage
from cloud.storage.urls import check_relative_key, is_remote_url, parse_url, safe_local_path

CREDENTIAL_VARS = [n for names in s3client.CREDENTIAL_ENV.values() for n in names] + [
    "S3_ENDPOINT", "OBS_ENDPOINT", "OBS_REGION", "S3_USE_HTTPS", "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"]


@pytest.fixture
def clean_env(monkeypatch):
    for name in CREDENTIAL_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize("url, scheme, bucket, prefix", [
    ("s3://bucket-1/data/train", "s3", "bucket-1", "data/train"),
    ("s3://bucket-1/data/train/", "s3", "bucket-1", "data/train"),
    ("s3://my.bucket", "s3", "my.bucket", ""),
    ("obs://obs-bucket/out", "obs", "obs-bucket", "out"),
    ("OBS://obs-bucket/out", "obs", "obs-bucket", "out"),
])
def test_parse_remote_urls(url, scheme, bucket, prefix):
    parsed = parse_url(url)
    assert (parsed.scheme, parsed.bucket, parsed.prefix) == (scheme, bucket, prefix)
    assert parsed.is_remote and is_remote_url(url)


def test_parse_local_paths(tmp_path):
    assert parse_url(str(tmp_path)).path == str(tmp_path)
    assert parse_url(f"file://{tmp_path}").path == str(tmp_path)
    rel = parse_url("some/dir")
    assert rel.scheme == "file" and os.path.isabs(rel.path)
    assert not is_remote_url(str(tmp_path))


@pytest.mark.parametrize("url", ["s3://", "s3:///prefix", "obs://Upper/x", "s3://ab/x",
                                 "gs://bucket/x", "http://host/x", "s3://bucket/a/../b",
                                 "s3://bucket/a\\b", "s3://bucket/a//b", "file://relative", ""])
def test_malformed_urls_raise_one_clear_line(url):
    with pytest.raises(ValueError) as info:
        parse_url(url)
    message = str(info.value)
    assert "\n" not in message
    assert "expected s3://bucket/prefix" in message
    if url:
        assert repr(url) in message


def test_child_and_key():
    url = parse_url("s3://bucket/out")
    assert url.key("ckpt/a.ckpt") == "out/ckpt/a.ckpt"
    assert str(url.child("latest.json")) == "s3://bucket/out/latest.json"
    assert parse_url("s3://bucket").key("a") == "a"


@pytest.mark.parametrize("key", ["../x", "/abs", "a/../../b", "a\\..\\..\\b", "a//b", "./a",
                                 "C:/x", "", "a/./b", "a/.."])
def test_unsafe_keys_are_refused_with_their_name(key, tmp_path):
    with pytest.raises(UnsafeKeyError) as info:
        safe_local_path(str(tmp_path), key)
    assert repr(key) in str(info.value)


def test_safe_local_path_stays_inside(tmp_path):
    assert safe_local_path(str(tmp_path), "a/b.txt") == str(tmp_path / "a" / "b.txt")
    assert check_relative_key("a/b.c") == "a/b.c"
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(UnsafeKeyError, match="outside"):
        safe_local_path(str(root), "link/x")


# --------------------------------------------------------------------------- settings, client


def test_settings_hide_secrets_and_reject_typos():
    settings = to_settings({"access_key_id": "AKIDSECRETLOOKING", "secret_access_key": "s3cr3t-value",
                            "session_token": "tok-value", "workers": 4})
    shown = repr(settings) + str(settings)
    for secret in ("s3cr3t-value", "tok-value", "AKIDSECRETLOOKING"):
        assert secret not in shown
    assert "credentials=set" in shown and settings.workers == 4
    with pytest.raises(ValueError, match="worker"):
        to_settings({"worker": 4})
    with pytest.raises(ValueError, match="retry_mode"):
        StorageSettings(retry_mode="forever")

    class Namespace:
        endpoint = "http://x:1"
        workers = 3
    assert to_settings(Namespace()).workers == 3


def test_credentials_order(clean_env):
    settings = StorageSettings()
    assert s3client.resolve_credentials("s3", settings).source.startswith("botocore")
    clean_env.setenv("ACCESS_KEY_ID", "ma-id")
    clean_env.setenv("SECRET_ACCESS_KEY", "ma-secret")
    assert s3client.resolve_credentials("obs", settings).source == "environment ACCESS_KEY_ID"
    clean_env.setenv("OBS_ACCESS_KEY_ID", "obs-id")
    clean_env.setenv("OBS_SECRET_ACCESS_KEY", "obs-secret")
    clean_env.setenv("OBS_SECURITY_TOKEN", "obs-token")
    creds = s3client.resolve_credentials("obs", settings)
    assert (creds.source, creds.session_token) == ("environment OBS_ACCESS_KEY_ID", "obs-token")
    clean_env.setenv("AWS_ACCESS_KEY_ID", "aws-id")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    assert s3client.resolve_credentials("s3", settings).source == "environment AWS_ACCESS_KEY_ID"
    assert s3client.resolve_credentials("obs", settings).source == "environment OBS_ACCESS_KEY_ID"
    explicit = StorageSettings(access_key_id="x", secret_access_key="y")
    assert s3client.resolve_credentials("obs", explicit).source == "storage settings"
    assert "obs-secret" not in repr(creds)


def test_half_credentials_name_the_missing_variable(clean_env):
    clean_env.setenv("OBS_ACCESS_KEY_ID", "obs-id")
    with pytest.raises(StorageError, match="OBS_SECRET_ACCESS_KEY"):
        s3client.resolve_credentials("obs", StorageSettings())


def test_endpoint_and_region_resolution(clean_env):
    settings = StorageSettings()
    with pytest.raises(StorageError, match="OBS_ENDPOINT"):
        s3client.resolve_endpoint("obs", settings)
    clean_env.setenv("OBS_REGION", "cn-north-4")
    assert s3client.resolve_endpoint("obs", settings) == "https://obs.cn-north-4.myhuaweicloud.com"
    clean_env.setenv("S3_ENDPOINT", "minio.local:9000")
    clean_env.setenv("S3_USE_HTTPS", "0")
    assert s3client.resolve_endpoint("s3", settings) == "http://minio.local:9000"
    assert s3client.resolve_endpoint("obs", settings) == "http://minio.local:9000"
    clean_env.setenv("OBS_ENDPOINT", "https://obs.ap-southeast-1.myhuaweicloud.com/")
    assert s3client.resolve_endpoint("obs", settings) == "https://obs.ap-southeast-1.myhuaweicloud.com"
    assert s3client.resolve_endpoint("s3", StorageSettings(endpoint="http://e:1")) == "http://e:1"


def test_obs_client_uses_virtual_hosting_sigv4_and_when_required_checksums(clean_env):
    clean_env.setenv("OBS_ENDPOINT", "https://obs.cn-north-4.myhuaweicloud.com")
    clean_env.setenv("OBS_ACCESS_KEY_ID", "obs-id")
    clean_env.setenv("OBS_SECRET_ACCESS_KEY", "obs-secret-value")
    storage = open_storage("obs://my-bucket/out", {"workers": 24, "retry_mode": "adaptive",
                                                   "max_attempts": 7})
    assert isinstance(storage, S3Storage)
    config = storage.client.meta.config
    assert config.s3["addressing_style"] == "virtual"
    assert config.signature_version == "s3v4"
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    assert config.retries == {"mode": "adaptive", "total_max_attempts": 7}
    assert config.max_pool_connections >= 24
    assert storage.connection.region == "cn-north-4"
    url = storage.client.generate_presigned_url("get_object", Params={"Bucket": "my-bucket", "Key": "k"})
    assert url.startswith("https://my-bucket.obs.cn-north-4.myhuaweicloud.com/k?")
    assert "obs-secret-value" not in repr(storage) + repr(storage.connection) + repr(storage.settings)


def test_fast_timestamp_parser_matches_botocore():
    from botocore.utils import parse_timestamp
    for value in ("2026-11-27T20:39:41.000Z", "2026-11-27T20:39:41Z",
                  "Fri, 27 Nov 2026 20:39:41 GMT", 1795812000):
        assert s3client._fast_timestamp(value) == parse_timestamp(value)


# --------------------------------------------------------------------------- storage ops


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        root = tmp_path / "store"
        root.mkdir()
        return open_storage(str(root))
    server = request.getfixturevalue("s3_server")
    return open_storage(f"s3://{server.make_bucket()}/prefix", server.settings())


def test_storage_interface(storage, tmp_path):
    storage.check()
    assert not storage.exists("a/b.txt") and storage.stat("a/b.txt") is None
    storage.write_bytes("a/b.txt", b"hello")
    assert storage.read_bytes("a/b.txt") == b"hello"
    info = storage.stat("a/b.txt")
    assert info.key == "a/b.txt" and info.size == 5 and info.version
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3000))
    storage.upload_file(str(src), "c/d/e.bin")
    (tmp_path / "empty").write_bytes(b"")
    storage.upload_file(str(tmp_path / "empty"), "empty")
    listed = sorted((key, size) for key, size, _version, _mtime in storage.list())
    assert listed == [("a/b.txt", 5), ("c/d/e.bin", 3000), ("empty", 0)]
    assert [i.key for i in storage.list("c")] == ["c/d/e.bin"]
    dest = tmp_path / "out" / "e.bin"
    dest.parent.mkdir()
    storage.download_file("c/d/e.bin", str(dest))
    assert dest.read_bytes() == src.read_bytes()
    assert os.listdir(dest.parent) == ["e.bin"]  # no temporary left
    storage.delete("a/b.txt")
    storage.delete("a/b.txt")  # missing: not an error
    assert not storage.exists("a/b.txt")
    with pytest.raises(StorageError, match="does not exist"):
        storage.download_file("missing", str(tmp_path / "missing"))
    assert not (tmp_path / "missing").exists()
    with pytest.raises(UnsafeKeyError):
        storage.write_bytes("../escape", b"x")
    assert not (tmp_path / "escape").exists()


def test_local_storage_is_a_directory(tmp_path):
    storage = open_storage(str(tmp_path))
    assert isinstance(storage, LocalStorage)
    storage.write_bytes("x/y", b"1")
    assert (tmp_path / "x" / "y").read_bytes() == b"1"
    with pytest.raises(StorageError, match="does not exist"):
        open_storage(str(tmp_path / "nope")).check()


def test_directory_markers_are_not_listed(s3_server):
    bucket = s3_server.make_bucket()
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="p/dir/", Body=b"")
    client.put_object(Bucket=bucket, Key="p/dir/file", Body=b"x")
    storage = open_storage(f"s3://{bucket}/p", s3_server.settings())
    assert [i.key for i in storage.list()] == ["dir/file"]


# --------------------------------------------------------------------------- errors


def _assert_one_line_without_secret(message: str, secret: str):
    assert "\n" not in message
    assert secret not in message


def test_wrong_credentials_give_one_clear_line(s3_server, caplog):
    bucket = s3_server.make_bucket()
    secret = "wrong-secret-value-123"
    caplog.set_level(logging.DEBUG, logger="cloud")
    storage = open_storage(f"s3://{bucket}/p", s3_server.settings(secret_access_key=secret,
                                                                   max_attempts=1))
    with pytest.raises(StorageError) as info:
        storage.check()
    message = str(info.value)
    _assert_one_line_without_secret(message, secret)
    assert bucket in message and s3_server.endpoint in message
    assert "credentials" in message and "storage settings" in message
    with pytest.raises(StorageError) as info:
        list(storage.list())
    _assert_one_line_without_secret(str(info.value), secret)
    assert secret not in caplog.text


def test_unknown_bucket_gives_clear_error(s3_server):
    storage = open_storage("s3://no-such-bucket-here/p", s3_server.settings())
    for call in (storage.check, lambda: list(storage.list()), lambda: storage.read_bytes("x")):
        with pytest.raises(StorageError) as info:
            call()
        message = str(info.value)
        assert "'no-such-bucket-here' does not exist" in message and "\n" not in message
        assert s3_server.secret_key not in message


def test_unreachable_endpoint_names_it():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    storage = open_storage("s3://bucket/p", {"endpoint": f"http://127.0.0.1:{port}", "max_attempts": 1,
                                             "access_key_id": "a", "secret_access_key": "b",
                                             "connect_timeout_s": 1})
    with pytest.raises(StorageError, match=f"cannot reach http://127.0.0.1:{port}"):
        storage.check()


def test_obs_url_with_obs_environment_credentials(s3_server, clean_env):
    """obs:// end to end: endpoint and keys from the OBS variable names."""
    bucket = s3_server.make_bucket()
    clean_env.setenv("OBS_ENDPOINT", s3_server.endpoint)
    clean_env.setenv("OBS_ACCESS_KEY_ID", s3_server.access_key)
    clean_env.setenv("OBS_SECRET_ACCESS_KEY", s3_server.secret_key)
    # SeaweedFS on an IP address cannot do virtual hosting; real OBS gets "virtual".
    storage = open_storage(f"obs://{bucket}/out", {"addressing_style": "path"})
    storage.write_bytes("x.json", b"{}")
    assert storage.read_bytes("x.json") == b"{}"
    assert storage.connection.credential_source == "environment OBS_ACCESS_KEY_ID"
