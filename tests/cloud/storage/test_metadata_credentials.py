"""OBS keys from the instance metadata service (a node's IAM agency), against SeaweedFS.

The HTTP server here stands in for Huawei Cloud's metadata service on 127.0.0.1. It answers
`GET /openstack/latest/securitykey` in the documented form
(`{"credential": {"access", "secret", "securitytoken", "expires_at"}}`; Huawei Cloud ECS docs
"Obtaining Metadata" / securitykey, HuaweiCloudBrazilTeam/hwc-iam-agency README), handing out
the S3 server's keys with an expiry close enough that botocore must fetch a new set before
each request. SeaweedFS refuses a security token it did not issue, so the storage round trip
gets the store's own keys with an empty token; a second test checks that a real token goes out
with every request.
"""
from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cloud.storage.errors import StorageError
from cloud.storage.store import open_storage

PATH = "/openstack/latest/securitykey"


class MetadataService:
    def __init__(self, access: str, secret: str, lifetime_s: float, token: str = ""):
        self.requests = 0
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                service.requests += 1
                if self.path != PATH:
                    self.send_error(404)
                    return
                expires = datetime.now(timezone.utc) + timedelta(seconds=lifetime_s)
                body = json.dumps({"credential": {
                    "access": access, "secret": secret, "securitytoken": token,
                    "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}{PATH}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def metadata(s3_server):
    # 5 minutes: inside botocore's mandatory-refresh window (10 min), so every use refreshes
    service = MetadataService(s3_server.access_key, s3_server.secret_key, lifetime_s=300)
    yield service
    service.close()


def test_storage_uses_refreshed_temporary_keys(s3_server, s3_bucket, metadata, tmp_path,
                                               monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "OBS_ACCESS_KEY_ID",
                 "OBS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    settings = {"endpoint": s3_server.endpoint, "region": s3_server.region,
                "metadata_url": metadata.url, "max_attempts": 2}
    store = open_storage(f"s3://{s3_bucket}/run", settings)
    (tmp_path / "a.txt").write_text("checkpoint")
    store.upload_file(str(tmp_path / "a.txt"), "a.txt")
    store.download_file("a.txt", str(tmp_path / "b.txt"))
    assert (tmp_path / "b.txt").read_text() == "checkpoint"
    assert metadata.requests >= 2  # the first set, then fresh ones before they expire


def test_the_security_token_goes_out_with_each_request(s3_server, s3_bucket):
    from cloud.storage.s3client import connect
    from cloud.storage.urls import parse_url
    service = MetadataService("TEMPAK", "TEMPSK", lifetime_s=3600, token="tok-" * 20)
    try:
        conn = connect(parse_url(f"s3://{s3_bucket}"), {"endpoint": s3_server.endpoint,
                                                        "metadata_url": service.url,
                                                        "max_attempts": 1})
        sent = []
        conn.client.meta.events.register("before-send.s3", lambda request, **_: sent.append(
            dict(request.headers)))
        with pytest.raises(Exception):
            conn.client.head_bucket(Bucket=s3_bucket)  # SeaweedFS does not know these keys
        assert sent and sent[0]["X-Amz-Security-Token"] == b"tok-" * 20
        assert b"Credential=TEMPAK/" in sent[0]["Authorization"]
        assert service.requests == 1  # an hour left: no refresh yet
    finally:
        service.close()


def test_unreachable_metadata_service_is_one_clear_error(s3_server, s3_bucket, metadata):
    url = metadata.url
    metadata.close()
    with pytest.raises(StorageError) as caught:
        open_storage(f"s3://{s3_bucket}/run", {"endpoint": s3_server.endpoint,
                                               "metadata_url": url}).check()
    message = str(caught.value)
    assert f"no temporary keys from the metadata service at {url}" in message
    assert "attach an IAM agency" in message and "\n" not in message
