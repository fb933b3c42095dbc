#!/usr/bin/env python
"""`make demo-cloud`: the cloud path end to end, without a cloud account.

Starts a local S3 server (SeaweedFS, from requirements-dev), uploads the embedded demo dataset,
trains with s3:// data and output, kills the run (-9) after its first uploaded checkpoint,
restarts it with --resume auto, and lists what the store holds at the end. Credentials reach
the training processes through their environment, never their command lines.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # python launcher/demo_cloud.py: the repository root onto sys.path
    import bootstrap  # noqa: F401

from launcher.bootstrap import REPO_ROOT  # noqa: E402

from cloud.storage.store import open_storage  # noqa: E402
from cloud.storage.sync import upload_tree  # noqa: E402
from launcher.cli import demo_dataset_path  # noqa: E402
from launcher.seaweedfs import start_s3_server, stop_s3_server  # noqa: E402

BUCKET = "demo"
RUN = f"s3://{BUCKET}/runs/cpu_demo"
TRAIN_ARGS = ["--config", "configs/cpu_demo.yaml", "--dataset_path", f"s3://{BUCKET}/datasets/demo",
              "--output_dir", RUN, "train.epochs=3", "train.eval_interval=0",
              "checkpoint.interval_steps=20"]


def say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def manifest(client) -> dict | None:
    try:
        body = client.get_object(Bucket=BUCKET, Key="runs/cpu_demo/checkpoints/latest.json")["Body"]
        return json.loads(body.read())
    except Exception:  # not there yet
        return None


def train(env: dict, extra=()) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "launcher" / "local.py"), "train",
                             *TRAIN_ARGS, *extra], cwd=REPO_ROOT, env=env, start_new_session=True)


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="mnv3-demo-cloud-"))
    say("starting a local S3 server (SeaweedFS)")
    server = start_s3_server(str(workdir / "s3"))
    try:
        server.make_bucket(BUCKET)
        print(f"endpoint {server.endpoint}, pid {server.pid}")
        env = dict(os.environ, **server.env(), MNV3_CACHE_DIR=str(workdir / "cache"), GLOG_v="3")
        client = server.client()

        say("uploading the embedded demo dataset")
        stats = upload_tree(demo_dataset_path(), open_storage(f"s3://{BUCKET}/datasets/demo",
                                                              server.settings()), "")
        print(stats)

        say(f"training with s3:// data and output ({RUN}); it is killed after its first checkpoint")
        first = train(env)
        while first.poll() is None and not manifest(client):
            time.sleep(0.5)
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        print(f"killed; the store's manifest says: {manifest(client)}")

        say("restarting with --resume auto")
        second = train(env, ["--resume", "auto"])
        if second.wait() != 0:
            print("error: the resumed run failed", file=sys.stderr)
            return 1

        say(f"objects left on the store under {RUN}")
        for obj in client.list_objects_v2(Bucket=BUCKET, Prefix="runs/")["Contents"]:
            print(f"{obj['Size']:>12,}  s3://{BUCKET}/{obj['Key']}")
        final = manifest(client)
        print(f"manifest: newest {final['key']} (step {final['step']}, sha256 {final['sha256'][:12]}...), "
              f"kept: {[c['key'] for c in final['checkpoints']]}")
        return 0
    finally:
        stop_s3_server(server)
        print(f"\nS3 server (pid {server.pid}) stopped; scratch data in {workdir}")


if __name__ == "__main__":
    sys.exit(main())
