"""cloud.storage.checkpoint_store: background upload, manifest order, keep-K, verified resume."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time

import pytest

from cloud.storage.checkpoint_store import CheckpointUploader, fetch_checkpoint, newest_checkpoint
from core.checkpoint_store import CheckpointStore
from cloud.storage.errors import StorageError
from cloud.storage.store import open_storage


@pytest.fixture(params=["s3", "local"])
def store(request, tmp_path):
    if request.param == "local":
        root = tmp_path / "remote"
        root.mkdir()
        return open_storage(str(root))
    server = request.getfixturevalue("s3_server")
    return open_storage(f"s3://{server.make_bucket()}/job", server.settings(workers=4))


def write_checkpoints(directory, count, size=50_000):
    directory.mkdir(exist_ok=True)
    paths = []
    for i in range(1, count + 1):
        path = directory / f"mbv3-{i}_{i * 100}.ckpt"
        path.write_bytes(os.urandom(size))
        paths.append(path)
    return paths


def remote_names(storage, prefix="ckpt"):
    return sorted(info.key.rsplit("/", 1)[-1] for info in storage.list(prefix))


def record_calls(storage, log):
    """Log upload/manifest/delete calls in order; check each manifest points at an object."""
    upload, write, delete = storage.upload_file, storage.write_bytes, storage.delete

    def upload_file(local, key, *a, **kw):
        upload(local, key, *a, **kw)
        log.append(("upload", key))

    def write_bytes(key, data):
        if key.endswith("latest.json"):
            manifest = json.loads(data)
            target = key.rsplit("/", 1)[0] + "/" + manifest["key"]
            assert storage.stat(target).size == manifest["size"], "manifest before its object"
        write(key, data)
        log.append(("manifest", key))

    def delete_(key):
        delete(key)
        log.append(("delete", key))
    storage.upload_file, storage.write_bytes, storage.delete = upload_file, write_bytes, delete_


def test_uploader_publishes_manifest_last_and_keeps_k(store, tmp_path):
    calls = []
    record_calls(store, calls)
    paths = write_checkpoints(tmp_path / "local", 4)
    with CheckpointUploader(store, "ckpt", keep=2) as uploader:
        for i, path in enumerate(paths, 1):
            uploader.submit(str(path), {"epoch": i, "step": i * 100, "lr": 0.1})
        report = uploader.wait(timeout=60)
    assert report.ok and len(report.uploaded) == 4, report
    kinds = [kind for kind, _key in calls]
    assert kinds == ["upload", "manifest"] * 2 + ["upload", "manifest", "delete"] * 2
    manifest = CheckpointStore(store, "ckpt").manifest()
    newest = paths[-1]
    assert manifest["key"] == newest.name and manifest["step"] == 400 and manifest["epoch"] == 4
    assert manifest["sha256"] == hashlib.sha256(newest.read_bytes()).hexdigest()
    assert manifest["size"] == newest.stat().st_size and manifest["meta"] == {"lr": 0.1}
    assert [e["key"] for e in manifest["checkpoints"]] == [paths[3].name, paths[2].name]
    assert remote_names(store) == sorted([paths[2].name, paths[3].name, "latest.json"])
    assert all(p.exists() for p in paths)  # local files are kept
    assert sorted(os.listdir(tmp_path / "local")) == sorted(p.name for p in paths)  # no pins left


def test_a_checkpoint_the_saver_hashed_is_not_read_again_for_its_digest(store, tmp_path, monkeypatch):
    """core.train.checkpoint_saver hands on the size and sha256 its run directory's store
    computed; the uploader records them instead of hashing the (pinned, same) file again."""
    import core.checkpoint_store as local_store
    hashed = []
    real = local_store.sha256_file
    monkeypatch.setattr(local_store, "sha256_file", lambda path: hashed.append(path) or real(path))
    (path,) = write_checkpoints(tmp_path / "local", 1)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with CheckpointUploader(store, "ckpt", keep=2) as uploader:
        uploader.submit_checkpoint(str(path), {"epoch": 1, "step": 100, "kind": "periodic",
                                               "size": path.stat().st_size, "sha256": digest,
                                               "config": {"not": "recorded"}})
        uploader.submit_checkpoint(str(path), {"epoch": 1, "step": 100})  # no digest: hashed
        assert uploader.wait(timeout=60).ok
    assert len(hashed) == 1
    manifest = CheckpointStore(store, "ckpt").manifest()
    assert manifest["sha256"] == digest and manifest["size"] == path.stat().st_size


def test_submit_does_not_wait_for_the_upload(store, tmp_path):
    release = threading.Event()
    upload = store.upload_file

    def slow_upload(*args, **kwargs):
        release.wait(10)
        upload(*args, **kwargs)
    store.upload_file = slow_upload
    (path,) = write_checkpoints(tmp_path / "local", 1)
    uploader = CheckpointUploader(store, "ckpt", keep=3)
    started = time.monotonic()
    uploader.submit(str(path), {"epoch": 1, "step": 10})
    assert time.monotonic() - started < 0.5
    path.unlink()  # the trainer's own keep-K may delete it: the pinned copy still uploads
    report = uploader.wait(timeout=0.2)
    assert report.pending == 1 and not report.ok
    release.set()
    report = uploader.close(timeout=30)
    assert report.ok and CheckpointStore(store, "ckpt").manifest()["step"] == 10


def test_failures_are_reported_not_raised(s3_server, tmp_path, caplog):
    secret = "a-wrong-secret-key"
    storage = open_storage(f"s3://{s3_server.make_bucket()}/job",
                           s3_server.settings(max_attempts=1, secret_access_key=secret))
    (path,) = write_checkpoints(tmp_path / "local", 1)
    uploader = CheckpointUploader(storage, "ckpt", retries=1, retry_delay_s=0.2)
    uploader.submit(str(path), {"epoch": 1, "step": 1})  # must not raise
    report = uploader.close(timeout=30)
    assert not report.ok and len(report.failed) == 1  # once, after the retry failed too
    assert caplog.text.count("refused the credentials") == 2 and "retrying in 0 s" in caplog.text
    assert "refused the credentials" in report.failed[0] and path.name in report.failed[0]
    assert secret not in caplog.text
    assert path.exists()


def failing_uploads(storage, count: int):
    """The first `count` uploads raise as an unreachable store would (after botocore's retries)."""
    upload, calls = storage.upload_file, []

    def upload_file(*args, **kwargs):
        calls.append(args[1])
        if len(calls) <= count:
            raise StorageError(f"cannot reach {storage.describe(args[1])}: injected outage")
        return upload(*args, **kwargs)
    storage.upload_file = upload_file
    return calls


def test_a_failed_upload_is_retried_later_and_lands(store, tmp_path, caplog):
    calls = failing_uploads(store, 2)
    (path,) = write_checkpoints(tmp_path / "local", 1)
    uploader = CheckpointUploader(store, "ckpt", retries=3, retry_delay_s=0.3)
    uploader.submit(str(path), {"epoch": 1, "step": 7})
    assert not uploader.wait(timeout=0.1).ok  # first attempt failed, a retry is scheduled
    report = uploader.close(timeout=60)
    assert report.ok and report.uploaded == ["ckpt/" + path.name] and len(calls) == 3
    assert CheckpointStore(store, "ckpt").manifest()["step"] == 7
    assert remote_names(store) == sorted([path.name, "latest.json"])
    assert caplog.text.count("retrying in") == 2


def test_retries_end_and_the_failure_is_reported(store, tmp_path):
    calls = failing_uploads(store, 10)
    (path,) = write_checkpoints(tmp_path / "local", 1)
    uploader = CheckpointUploader(store, "ckpt", retries=2, retry_delay_s=0.1)
    uploader.submit(str(path), {"epoch": 1, "step": 7})
    report = uploader.close(timeout=60)
    assert len(calls) == 3 and not report.ok and len(report.failed) == 1 and report.pending == 0
    assert "injected outage" in report.failed[0] and CheckpointStore(store, "ckpt").manifest() is None


def test_a_newer_checkpoint_supersedes_a_failed_one(store, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    failing_uploads(store, 1)
    first, second = write_checkpoints(tmp_path / "local", 2)
    uploader = CheckpointUploader(store, "ckpt", retries=3, retry_delay_s=30.0)
    uploader.submit(str(first), {"epoch": 1, "step": 1})
    assert not uploader.wait(timeout=0.3).ok
    uploader.submit(str(second), {"epoch": 2, "step": 2})  # long before the first one's retry
    report = uploader.close(timeout=20)
    assert report.ok and report.uploaded == ["ckpt/" + second.name]
    assert CheckpointStore(store, "ckpt").manifest()["step"] == 2
    assert remote_names(store) == sorted([second.name, "latest.json"])
    assert f"dropping the failed upload of {first}" in caplog.text


def test_finish_waits_for_uploads_only_as_long_as_it_is_told(s3_server, tmp_path, caplog):
    """After SIGTERM the launcher passes what is left of the grace period: a checkpoint upload
    stuck in retries must not hold the job past it; the run directory is still published."""
    from types import SimpleNamespace

    from cloud.job import PreparedJob
    url = f"s3://{s3_server.make_bucket()}/job"
    settings = s3_server.settings()
    store = open_storage(url, settings)
    failing_uploads(store, 10)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (path,) = write_checkpoints(run / "checkpoints", 1)
    uploader = CheckpointUploader(store, "checkpoints", retries=3, retry_delay_s=30.0)
    uploader.submit(str(path), {"epoch": 1, "step": 3})
    job = PreparedJob(cfg=SimpleNamespace(system=SimpleNamespace(output_dir=str(run))), resume=None,
                      output_url=url, settings=settings, uploader=uploader)
    started = time.monotonic()
    job.finish(timeout_s=1.0)
    assert time.monotonic() - started < 15  # not the 30 s retry delay
    assert "some checkpoint uploads failed or did not finish within 1.0 s" in caplog.text
    assert f"checkpoints/{path.name}" in [info.key for info in open_storage(url, settings).list("checkpoints")]


def test_resume_verifies_and_falls_back_past_corrupt_and_truncated(store, tmp_path, caplog):
    paths = write_checkpoints(tmp_path / "local", 3)
    with CheckpointUploader(store, "ckpt", keep=3) as uploader:
        for i, path in enumerate(paths, 1):
            uploader.submit(str(path), {"epoch": i, "step": i * 100})
        assert uploader.wait(60).ok
    cache = tmp_path / "cache"

    good = newest_checkpoint(store, "ckpt", str(cache))
    assert open(good, "rb").read() == paths[2].read_bytes()

    newest, middle = paths[2].name, paths[1].name
    flipped = bytearray(paths[2].read_bytes())
    flipped[100:110] = bytes(b ^ 0xFF for b in flipped[100:110])
    store.write_bytes(f"ckpt/{newest}", bytes(flipped))  # same size, wrong bytes
    store.write_bytes(f"ckpt/{middle}", paths[1].read_bytes()[:1000])  # truncated
    # A verified copy already in the cache is the manifest's checkpoint: reused.
    assert newest_checkpoint(store, "ckpt", str(cache)) == good

    caplog.set_level(logging.WARNING, logger="cloud")
    fresh = tmp_path / "fresh-cache"
    path = newest_checkpoint(store, "ckpt", str(fresh))
    assert open(path, "rb").read() == paths[0].read_bytes()
    assert newest in caplog.text and "sha256" in caplog.text
    assert middle in caplog.text and "size" in caplog.text
    assert os.listdir(fresh) == [paths[0].name]  # bad downloads removed

    store.write_bytes(f"ckpt/{paths[0].name}", b"garbage")
    with pytest.raises(StorageError, match="no usable checkpoint"):
        newest_checkpoint(store, "ckpt", str(tmp_path / "third-cache"))


def test_unreadable_manifest_is_a_clear_error(store, tmp_path):
    store.write_bytes("ckpt/latest.json", b"{not json")
    with pytest.raises(StorageError, match="latest.json is not valid"):
        newest_checkpoint(store, "ckpt", str(tmp_path / "cache"))


def test_explicit_checkpoint_url(s3_server, tmp_path):
    bucket = s3_server.make_bucket()
    storage = open_storage(f"s3://{bucket}/job", s3_server.settings())
    paths = write_checkpoints(tmp_path / "local", 2)
    with CheckpointUploader(storage, "ckpt", keep=2) as uploader:
        for i, path in enumerate(paths, 1):
            uploader.submit(str(path), {"epoch": i, "step": i})
    url = f"s3://{bucket}/job/ckpt/{paths[0].name}"
    local = fetch_checkpoint(url, str(tmp_path / "cache"), s3_server.settings())
    assert open(local, "rb").read() == paths[0].read_bytes()
    storage.write_bytes(f"ckpt/{paths[0].name}", b"tampered")
    with pytest.raises(StorageError, match="corrupt"):
        fetch_checkpoint(url, str(tmp_path / "cache2"), s3_server.settings())
    assert fetch_checkpoint(str(paths[1]), str(tmp_path / "cache")) == str(paths[1])
    with pytest.raises(StorageError, match="does not exist"):
        fetch_checkpoint(f"s3://{bucket}/job/ckpt/missing.ckpt", str(tmp_path / "c"), s3_server.settings())


def test_uploader_continues_an_existing_manifest(store, tmp_path):
    """A restarted job keeps the remote keep-K going from the manifest it finds."""
    paths = write_checkpoints(tmp_path / "local", 3)
    with CheckpointUploader(store, "ckpt", keep=2) as first:
        first.submit(str(paths[0]), {"epoch": 1, "step": 1})
        first.submit(str(paths[1]), {"epoch": 2, "step": 2})
    with CheckpointUploader(store, "ckpt", keep=2) as second:
        second.submit(str(paths[2]), {"epoch": 3, "step": 3})
    manifest = CheckpointStore(store, "ckpt").manifest()
    assert [e["key"] for e in manifest["checkpoints"]] == [paths[2].name, paths[1].name]
    assert remote_names(store) == sorted([paths[1].name, paths[2].name, "latest.json"])
