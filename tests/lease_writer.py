"""A checkpoint writer for tests/launcher/test_adversarial.py: the real Lease, CheckpointUploader and
PreparedJob publish, in a process a test can SIGSTOP.

    python tests/lease_writer.py OUTPUT_URL RUN_DIR TTL_S

Takes the output's lease (TTL_S, renewed every TTL_S / 3), uploads checkpoint step 1, writes
RUN_DIR/ready, waits for RUN_DIR/go, then submits checkpoint step 3 and publishes RUN_DIR as a
job's finish() does. Prints one JSON line: the upload report and the publish error, if any.
Credentials and endpoint come from the environment (AWS_*, S3_ENDPOINT).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(url: str, run_dir: str, ttl_s: float) -> None:
    from cloud.storage.checkpoint_store import CheckpointUploader
    from cloud.storage.errors import StorageError
    from cloud.job import PreparedJob
    from cloud.storage.lease import Lease
    from cloud.storage.store import open_storage
    run = Path(run_dir)
    storage = open_storage(url)
    lease = Lease(storage, "job-old", ttl_s=ttl_s).acquire().start_renewing()
    uploader = CheckpointUploader(storage, "checkpoints", keep=3, retries=0, lease=lease)
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    first = run / "checkpoints" / "m-e0001-s00000001.ckpt"
    first.write_bytes(os.urandom(2000))
    uploader.submit(str(first), {"epoch": 1, "step": 1})
    assert uploader.wait(60).ok
    (run / "ready").write_text(str(os.getpid()))
    while not (run / "go").exists():
        time.sleep(0.05)
    third = run / "checkpoints" / "m-e0001-s00000003.ckpt"
    third.write_bytes(os.urandom(2000))
    uploader.submit(str(third), {"epoch": 1, "step": 3})
    report = uploader.close(60)
    (run / "train.log").write_text("the old writer's log\n")
    job = PreparedJob(cfg=SimpleNamespace(system=SimpleNamespace(output_dir=str(run))), resume=None,
                      output_url=url, uploader=None, lease=lease)
    try:
        job.finish()
        published = None
    except StorageError as exc:
        published = str(exc)
    print(json.dumps({"failed": report.failed, "publish_error": published}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
