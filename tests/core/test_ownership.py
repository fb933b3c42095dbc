"""A run owns its directory (core.ownership) and its output URL (cloud.storage.lease): a second writer
is refused with one line; an owner that is provably gone (or whose lease expired) is taken over."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from cloud.storage.checkpoint_store import CheckpointUploader
from core.checkpoint_store import CheckpointStore
from cloud.storage.lease import Lease, LeaseError
from cloud.storage.store import open_storage
from core.ownership import LOCK_NAME, RunLock, RunLockError

from tests.paths import REPO
HOLDER = ("import sys, time; sys.path.insert(0, sys.argv[1]); from core.ownership import RunLock; "
          "RunLock(sys.argv[2], sys.argv[3]).acquire(); print('held', flush=True); time.sleep(60)")


@pytest.fixture
def holder(tmp_path):
    """Another process that owns tmp_path/run (job 'job-other') until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(REPO), str(tmp_path / "run"), "job-other"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()


def test_second_writer_refused_with_owner_same_job_shares_dead_owner_taken_over(tmp_path, holder):
    run = tmp_path / "run"
    with pytest.raises(RunLockError) as refused:
        RunLock(run, "job-mine").acquire()
    line = str(refused.value)
    assert "\n" not in line and f"pid {holder.pid}" in line and socket.gethostname() in line
    assert "job-other" in line and "another --output_dir" in line
    shared = RunLock(run, "job-other").acquire()  # another rank of the owner's job
    assert not shared.held
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(10)
    mine = RunLock(run, "job-mine").acquire()  # the owner is provably gone (its flock went with it)
    owner = json.loads((run / LOCK_NAME).read_text())
    assert mine.held and owner["pid"] == os.getpid() and owner["job_id"] == "job-mine"
    mine.release()
    assert not (run / LOCK_NAME).exists()


def test_a_lock_recorded_by_another_host_is_not_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"host": "node-elsewhere", "pid": 4242, "job_id": "j9",
                                             "since": "2026-11-30T10:00:00Z"}))
    with pytest.raises(RunLockError, match="in use by pid 4242 on host node-elsewhere \\(job j9\\)"):
        RunLock(run, "job-mine").acquire()


def test_a_second_train_into_a_directory_in_use_is_one_error_line_and_writes_nothing(
        tmp_path, holder, tiny_dataset):
    run = tmp_path / "run"
    before = sorted(p.name for p in run.iterdir())
    done = subprocess.run([sys.executable, str(REPO / "launcher" / "local.py"), "train", "--resume",
                           "auto", "--output_dir", str(run), "--dataset_path", str(tiny_dataset),
                           "--device_target", "CPU"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, MNV3_CACHE_DIR=str(tmp_path / "cache")))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {RunLock(run, 'x')._refusal(json.loads((run / LOCK_NAME).read_text()))}")
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in run.iterdir()) == before  # no train.log, config, metrics


# --------------------------------------------------------------------------- S3


def test_seaweedfs_honours_conditional_puts(s3_server):
    """What cloud.storage.lease relies on where the store supports it (SeaweedFS 4.48 does)."""
    client, bucket = s3_server.client(), s3_server.make_bucket()
    client.put_object(Bucket=bucket, Key="k", Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=bucket, Key="k", Body=b"2", IfNoneMatch="*")
    with pytest.raises(ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=bucket, Key="k", Body=b"3", IfMatch='"0123"')
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"1"


def test_only_the_lease_owner_writes_the_manifest(s3_server, tmp_path):
    storage = open_storage(f"s3://{s3_server.make_bucket()}/runs/r1", s3_server.settings())
    first = Lease(storage, "job-a", ttl_s=1.0).acquire()
    assert first.conditional  # SeaweedFS: If-None-Match / If-Match writes
    with pytest.raises(LeaseError) as refused:
        Lease(storage, "job-b", ttl_s=1.0, wait_s=0).acquire()
    assert "in use by pid" in str(refused.value) and "job-a" in str(refused.value)
    ckpts = tmp_path / "c"
    ckpts.mkdir()
    for step in (1, 2, 3):
        (ckpts / f"m-e0001-s{step:08d}.ckpt").write_bytes(os.urandom(1000))
    old = CheckpointUploader(storage, "checkpoints", keep=3, retries=0, lease=first)
    old.submit(str(ckpts / "m-e0001-s00000001.ckpt"), {"epoch": 1, "step": 1})
    assert old.wait(30).ok
    # the first owner stops renewing (hung, partitioned): after its expiry a new run takes over
    time.sleep(1.1)
    second = Lease(storage, "job-b", ttl_s=30.0, wait_s=0).acquire()
    new = CheckpointUploader(storage, "checkpoints", keep=3, retries=0, lease=second)
    new.submit(str(ckpts / "m-e0001-s00000002.ckpt"), {"epoch": 1, "step": 2})
    assert new.close(30).ok
    old.submit(str(ckpts / "m-e0001-s00000003.ckpt"), {"epoch": 1, "step": 3})
    report = old.close(30)
    assert not report.ok and "no longer owns" in report.failed[0]
    assert CheckpointStore(storage, "checkpoints").manifest()["step"] == 2  # never overwritten by the old owner
    second.release()
    assert storage.stat(".lease.json") is None


def test_conditional_create_lets_exactly_one_of_two_racing_writers_in(s3_server):
    storage = open_storage(f"s3://{s3_server.make_bucket()}/r", s3_server.settings())
    a, b = Lease(storage, "job-a", wait_s=0), Lease(storage, "job-b", wait_s=0)
    a._write_if(a._record(), etag=None)  # a's conditional create lands first
    with pytest.raises(LeaseError):
        b.acquire()
    assert json.loads(storage.read_bytes(".lease.json"))["job_id"] == "job-a"


def test_a_lease_left_by_a_dead_process_on_this_host_is_taken_over_at_once(s3_server):
    storage = open_storage(f"s3://{s3_server.make_bucket()}/r", s3_server.settings())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    storage.write_bytes(".lease.json", json.dumps({
        "owner": "x", "host": socket.gethostname(), "pid": dead.pid, "job_id": "old",
        "since": "2026-11-30T10:00:00Z", "expires": time.time() + 3600}).encode())
    lease = Lease(storage, "new", wait_s=0).acquire()
    assert json.loads(storage.read_bytes(".lease.json"))["owner"] == lease.owner
    lease.release()


def test_a_store_without_conditional_writes_still_refuses_a_second_writer(tmp_path):
    storage = open_storage(str(tmp_path / "out"))
    first = Lease(storage, "job-a").acquire()
    assert not first.conditional  # a local folder: read-compare-write
    with pytest.raises(LeaseError, match="in use by pid .* \\(job job-a\\)"):
        Lease(storage, "job-b", wait_s=0).acquire()
    first.release()
    Lease(storage, "job-b", wait_s=0).acquire().release()


def test_without_flock_the_owner_record_decides(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_flock)
    run = tmp_path / "run"
    run.mkdir()
    record = {"host": socket.gethostname(), "pid": os.getppid(), "job_id": "other", "since": "t"}
    (run / LOCK_NAME).write_text(json.dumps(record))
    with pytest.raises(RunLockError, match=f"in use by pid {os.getppid()}"):
        RunLock(run, "mine").acquire()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / LOCK_NAME).write_text(json.dumps(dict(record, pid=dead.pid)))
    RunLock(run, "mine").acquire().release()
