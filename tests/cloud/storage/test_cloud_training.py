"""Training against a real S3 server (SeaweedFS on 127.0.0.1): s3:// data and outputs,
kill -9 after a checkpoint, restart with --resume auto."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloud.storage.store import open_storage
from cloud.storage.sync import upload_tree

from tests.paths import REPO


def launch(args, server, cache):
    env = dict(os.environ, **server.env(), MNV3_CACHE_DIR=str(cache), GLOG_v="3", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(REPO / "launcher" / "local.py"), "train", *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def manifest(server, bucket):
    try:
        body = server.client().get_object(Bucket=bucket, Key="runs/r1/checkpoints/latest.json")["Body"]
        return json.loads(body.read())
    except Exception:
        return None


def test_s3_train_killed_after_checkpoint_resumes_at_that_step(s3_server, tiny_dataset, tmp_path):
    bucket = s3_server.make_bucket()
    upload_tree(str(tiny_dataset), open_storage(f"s3://{bucket}/data", s3_server.settings()), "")
    args = ["--dataset_path", f"s3://{bucket}/data", "--output_dir", f"s3://{bucket}/runs/r1",
            "--device_target", "CPU", "data.image_size=32", "data.eval_resize=36", "data.batch_size=8",
            "data.workers=1", "train.epochs=8", "optim.warmup_epochs=0", "train.log_interval=1",
            "checkpoint.interval_steps=2", "checkpoint.keep=3"]
    cache = tmp_path / "cache"
    first = launch(args, s3_server, cache)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and first.poll() is None:
            found = manifest(s3_server, bucket)
            if found and found["step"] >= 2:
                break
            time.sleep(0.2)
        assert first.poll() is None, "training ended before it could be killed:\n" + first.stdout.read()
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
        first.stdout.close()
    at_kill = manifest(s3_server, bucket)
    assert at_kill and at_kill["step"] < 56
    objects = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket, Prefix="runs/r1/")["Contents"]}
    assert f"runs/r1/checkpoints/{at_kill['key']}" in objects  # the manifest names a complete object

    second = launch(args + ["--resume", "auto"], s3_server, cache)
    try:
        out, _ = second.communicate(timeout=300)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
            second.wait(30)
    assert second.returncode == 0, out
    assert f"resumed from" in out and f"at global step {at_kill['step']}" in out
    summary = json.loads(s3_server.client().get_object(Bucket=bucket, Key="runs/r1/summary.json")["Body"].read())
    assert summary["start_step"] == at_kill["step"] and summary["step"] == 56
    final = manifest(s3_server, bucket)
    assert final["step"] == 56 and len(final["checkpoints"]) <= 3
    listed = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket, Prefix="runs/r1/")["Contents"]}
    for entry in final["checkpoints"]:
        assert f"runs/r1/checkpoints/{entry['key']}" in listed
    assert {"runs/r1/metrics.jsonl", "runs/r1/config.yaml", "runs/r1/train.log"} <= listed


def test_second_run_into_a_used_output_url_is_refused(s3_server, tmp_path):
    bucket = s3_server.make_bucket()
    s3_server.client().put_object(Bucket=bucket, Key="runs/r1/checkpoints/x.ckpt", Body=b"weights")
    s3_server.client().put_object(Bucket=bucket, Key="runs/r1/checkpoints/latest.json",
                                  Body=json.dumps({"key": "x.ckpt", "step": 1, "checkpoints": []}))
    proc = launch(["--output_dir", f"s3://{bucket}/runs/r1", "--device_target", "CPU"], s3_server, tmp_path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert out.strip().splitlines()[-1] == (f"error: s3://{bucket}/runs/r1 already holds checkpoints; "
                                            f"pass --resume auto to continue that run or choose another output URL")
