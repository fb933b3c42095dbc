"""storage.engine: the lean request path (cloud.s3lean) against botocore and SeaweedFS.

The guarantees of staging (incremental, atomic, once per node, traversal refusal) are tested
on both engines in tests/test_sync.py; this module checks the lean path itself: its signature
is botocore's, it is really used (and shown to botocore's before-send handlers), a store that
refuses it sends each object down the boto3 path, uploads, and where it is not used.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import uuid

import pytest

from cloud import s3lean
from cloud.storage import open_storage
from cloud.sync import download_tree, upload_tree



@pytest.fixture(scope="module")
def shared_bucket(s3_server) -> str:
    """One bucket for the module: SeaweedFS spends ~1 s on a new bucket's first write, a new
    prefix costs nothing."""
    return s3_server.make_bucket()


def fresh_prefix(bucket: str) -> str:
    """``s3://bucket/<unique>``: each test's own corner of the shared bucket."""
    return f"s3://{bucket}/{uuid.uuid4().hex[:12]}"

@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("method", ["GET", "PUT"])
@pytest.mark.parametrize("token", [None, "tok/en+=="])
def test_signature_is_botocores(monkeypatch, scheme, method, token):
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    now = datetime.datetime(2026, 11, 30, 20, 1, 2)
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: now)
    key = "pre/dir with space/ünï+cödé=1~.jpg"
    path = "/bucket/" + s3lean._quote_key(key)
    body = b"payload bytes" if method == "PUT" else None
    host = "127.0.0.1:8333"
    request = AWSRequest(method=method, url=f"{scheme}://{host}{path}", data=body,
                         headers={"Content-Length": str(len(body))} if body else {})
    S3SigV4Auth(Credentials("AKID", "SECRET", token), "s3", "eu-west-9").add_auth(request)
    payload = request.headers["X-Amz-Content-SHA256"]
    ours = s3lean.sigv4_headers(method, host, path, payload, "AKID", "SECRET", token, "eu-west-9",
                                now.strftime("%Y%m%dT%H%M%SZ"),
                                {"Content-Length": str(len(body))} if body else None)
    assert ours["Authorization"] == request.headers["Authorization"]
    # Signed payloads on either scheme, as botocore's own PutObject (no checksum header):
    assert payload == hashlib.sha256(body or b"").hexdigest()


def counting(storage):
    """(before-send count, botocore-parsed answers) of GetObject/PutObject on ``storage``."""
    seen = {"sent": 0, "parsed": 0}

    def sent(**_):
        seen["sent"] += 1

    def parsed(**_):
        seen["parsed"] += 1
    events = storage.client.meta.events
    for op in ("GetObject", "PutObject"):
        events.register(f"before-send.s3.{op}", sent)
        events.register(f"after-call.s3.{op}", parsed)
    return seen


@pytest.mark.parametrize("engine", ["auto", "boto3"])
def test_small_objects_go_lean_unless_boto3_is_asked(s3_server, shared_bucket, tmp_path,
                                                     engine):
    storage = open_storage(f"{fresh_prefix(shared_bucket)}/p",
                           s3_server.settings(workers=4, engine=engine))
    src = tmp_path / "src"
    files = {f"d{i % 2}/f{i}.bin": os.urandom(1000 + i) for i in range(6)}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    seen = counting(storage)
    assert upload_tree(str(src), storage, "").files_transferred == 6
    assert download_tree(storage, "", str(tmp_path / "cache")).files_transferred == 6
    assert seen["sent"] == 12  # every request is shown to botocore's handlers, once
    assert seen["parsed"] == (0 if engine == "auto" else 12)  # ...but botocore parsed none
    for rel, data in files.items():
        assert (tmp_path / "cache" / rel).read_bytes() == data
        assert storage.read_bytes(rel) == data


def test_a_store_refusing_lean_requests_gets_every_object_through_boto3(s3_server, shared_bucket,
                                                                        tmp_path,
                                                                        monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="cloud")
    settings = s3_server.settings(workers=2)
    storage = open_storage(f"{fresh_prefix(shared_bucket)}/p", settings)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"{i}.txt").write_bytes(b"x" * i)
    real = s3lean.sigv4_headers

    def wrong_secret(*args, **kwargs):  # SignatureDoesNotMatch for every lean request
        args = list(args)
        args[5] = "not-the-secret"
        return real(*args, **kwargs)
    monkeypatch.setattr(s3lean, "sigv4_headers", wrong_secret)
    assert upload_tree(str(src), storage, "").files_transferred == 20
    stats = download_tree(storage, "", str(tmp_path / "cache"))
    assert stats.files_transferred == 20 and stats.failed == []
    assert all((tmp_path / "cache" / f"{i}.txt").read_bytes() == b"x" * i for i in range(20))
    assert "lean S3 requests stopped after 16 fallbacks in a row (last: PUT answered 403)" in caplog.text
    assert settings["secret_access_key"] not in caplog.text


def test_lean_requests_are_not_used_behind_a_proxy_or_without_keys(s3_server, shared_bucket, monkeypatch):
    storage = open_storage(f"{fresh_prefix(shared_bucket)}/p", s3_server.settings())
    assert s3lean.unusable_reason(storage) is None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert "proxy" in s3lean.unusable_reason(storage)
    assert s3lean.lean_for(storage) is None
    monkeypatch.delenv("HTTP_PROXY")
    monkeypatch.setattr(storage.client, "_get_credentials", lambda: None)
    assert "no credentials" in s3lean.unusable_reason(storage)
    boto3_only = open_storage(f"{fresh_prefix(shared_bucket)}/p", s3_server.settings(engine="boto3"))
    assert s3lean.unusable_reason(boto3_only) == "storage.engine is boto3"


def test_unknown_engine_is_one_clear_error():
    from cloud.settings import to_settings
    with pytest.raises(ValueError, match="storage engine 's5': expected one of auto, boto3"):
        to_settings({"engine": "s5"})
