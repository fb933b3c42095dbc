"""storage.engine: the lean request path (cloud.storage.s3lean) against botocore and SeaweedFS.

The guarantees of staging (incremental, atomic, once per node, traversal refusal) are tested
on both engines in tests/cloud/storage/test_sync.py; this module checks the lean path itself: it carries
botocore's signature with the payload signed, it is really used (and shown to botocore's before-send handlers), a store that
refuses it sends each object down the boto3 path, uploads, and where it is not used.
"""

from __future__ import annotations

import hashlib
import logging
import os

import pytest

from cloud.storage import s3lean
from cloud.storage.store import open_storage
from tests.s3_server import fresh_prefix
from cloud.storage.sync import download_tree, upload_tree




def test_lean_requests_carry_botocores_signature_with_the_payload_signed(s3_server, shared_bucket,
                                                                         tmp_path):
    """What goes on the wire: botocore's S3 SigV4 headers (the signer is botocore's own), the
    payload's SHA-256 signed for PUT (some S3-compatible stores refuse UNSIGNED-PAYLOAD), the
    empty body's for GET, and SeaweedFS accepts both."""
    storage = open_storage(f"{fresh_prefix(shared_bucket)}/p", s3_server.settings(workers=1))
    sent = []
    for op in ("GetObject", "PutObject"):
        storage.client.meta.events.register(f"before-send.s3.{op}",
                                            lambda request, **_: sent.append(request))
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(3000)
    (src / "a.bin").write_bytes(data)
    assert upload_tree(str(src), storage, "").files_transferred == 1
    assert download_tree(storage, "", str(tmp_path / "cache")).files_transferred == 1
    assert (tmp_path / "cache" / "a.bin").read_bytes() == data
    put, get = sent
    assert put.method == "PUT" and get.method == "GET"
    assert put.headers["User-Agent"] == get.headers["User-Agent"] == "mnv3-cloud-lean/1"
    assert put.headers["X-Amz-Content-SHA256"] == hashlib.sha256(data).hexdigest()
    assert get.headers["X-Amz-Content-SHA256"] == hashlib.sha256(b"").hexdigest()
    for request in (put, get):
        assert request.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=")
        assert "host;x-amz-content-sha256;x-amz-date, Signature=" in request.headers["Authorization"]


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
    from botocore.auth import S3SigV4Auth
    from botocore.credentials import Credentials

    class WrongSecret(S3SigV4Auth):  # SignatureDoesNotMatch for every lean request
        def __init__(self, credentials, *args):
            super().__init__(Credentials(credentials.access_key, "not-the-secret"), *args)
    # the lean path looks the signer up in botocore.auth per request; botocore's own client
    # keeps its reference, so the boto3 path still signs right
    monkeypatch.setattr("botocore.auth.S3SigV4Auth", WrongSecret)
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
    from cloud.storage.settings import to_settings
    with pytest.raises(ValueError, match="storage engine 's5': expected one of auto, boto3"):
        to_settings({"engine": "s5"})


@pytest.mark.parametrize("engine", ["auto", "boto3"])
def test_large_objects_go_as_lean_ranged_gets_into_one_part_file(s3_server, shared_bucket,
                                                                  tmp_path, engine):
    """Above the multipart threshold, with size and ETag from the listing: no HEAD, one ranged
    lean GET per part (botocore parses none of them), byte-identical result."""
    settings = s3_server.settings(workers=3, engine=engine, multipart_threshold_mb=1,
                                  multipart_chunksize_mb=1)
    storage = open_storage(f"{fresh_prefix(shared_bucket)}/p", settings)
    data = os.urandom(3 * 1024 * 1024 + 5)
    storage.write_bytes("big.bin", data)
    seen = counting(storage)
    ranges = []
    storage.client.meta.events.register(
        "before-send.s3.GetObject", lambda request, **_: ranges.append(request.headers.get("Range")))
    stats = download_tree(storage, "", str(tmp_path / "cache"))
    assert stats.files_transferred == 1 and stats.bytes_transferred == len(data)
    assert (tmp_path / "cache" / "big.bin").read_bytes() == data
    if engine == "auto":
        assert seen["parsed"] == 0
        assert sorted(ranges) == [f"bytes={i * 1048576}-{min((i + 1) * 1048576, len(data)) - 1}"
                                  for i in range(4)]
    else:
        assert seen["parsed"] == seen["sent"] > 0


def test_a_range_of_another_version_sends_the_object_through_the_manager(s3_server, shared_bucket,
                                                                          tmp_path, caplog):
    """The listing's ETag is checked on every ranged answer: an object replaced after the
    listing is not assembled from parts of two uploads; the manager fetches it whole."""
    caplog.set_level(logging.INFO, logger="cloud")
    settings = s3_server.settings(workers=2, multipart_threshold_mb=1, multipart_chunksize_mb=1)
    storage = open_storage(f"{fresh_prefix(shared_bucket)}/p", settings)
    data = os.urandom(2 * 1024 * 1024 + 7)
    storage.write_bytes("big.bin", data)
    real_list = storage.list
    storage.list = lambda prefix="": (info._replace(version="0" * 32) for info in real_list(prefix))
    stats = download_tree(storage, "", str(tmp_path / "cache"))
    assert stats.files_transferred == 1 and stats.bytes_transferred == len(data)
    assert (tmp_path / "cache" / "big.bin").read_bytes() == data
    assert "fetching it through the transfer manager" in caplog.text
    assert sorted(os.listdir(tmp_path / "cache")) == [".cloud-sync-state.json", "big.bin"]
