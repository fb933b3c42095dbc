"""Elastic resume through msrun: a run stopped mid-epoch continues on another number of processes
at the same global batch, and ends as an uninterrupted run does: the same samples at every step
(samples.jsonl), the same learning rate at every step and the same step count.

Two stops: a 2-process msrun run stopped by SIGTERM (to the launcher, as a platform stops a job,
injected at a known step by tests/hooks MNV3_TEST_SIGTERM_AT) then resumed by one process, and a
1-process run stopped mid-epoch then resumed by 3 msrun processes. The data is the tiny dataset
packed in class order with the shard-window shuffle on; the 2-process run streams that pack from
SeaweedFS on 127.0.0.1 (data.stream=true, both ranks sharing one node cache), every other run
reads the local pack. Every process started here is killed by pid at the end of its test
(tests/cloud/cluster/test_distributed.Launched; the SeaweedFS server by tests/s3_server.py).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from cloud.storage.store import open_storage
from cloud.storage.sync import upload_tree
from core.train.callbacks import Callback
from core.train.loop import train
from core.train.metrics import read_metrics
from core.train.sample_log import read_sample_log
from tests.cloud.cluster.test_distributed import hooked, launched  # noqa: F401 (fixture)
from tests.core_fixtures import tiny_config

GLOBAL_BATCH, PER_EPOCH, STEPS = 18, 3, 12  # 60 images: 3 global batches of 18 an epoch, 4 epochs
RECIPE = {"data.global_batch_size": GLOBAL_BATCH, "data.batch_size": 5,  # 5: not used, G is set
          "data.sample_log": True, "data.shuffle_window": 3, "data.image_size": 32,
          "data.eval_resize": 36, "data.workers": 1, "optim.lr": 0.01, "optim.warmup_epochs": 1,
          "train.epochs": 4, "train.eval_at_end": False, "train.log_interval": 1,
          "system.device_target": "CPU"}
# the same run as a recipe that states only the per-device batch: 9 on 2 processes is G = 18, and
# a resume of it on another process count keeps G (core.train.elastic.inherited_global_batch)
PER_DEVICE_RECIPE = {**{k: v for k, v in RECIPE.items() if k != "data.global_batch_size"},
                     "data.batch_size": 9}


def command_line(pack, out, *extra, recipe=RECIPE):
    return ["launcher/local.py", "train", "--dataset_path", pack, "--output_dir", out, *extra,
            *(f"{key}={json.dumps(value)}" for key, value in recipe.items())]


def in_process(pack, out, recipe=RECIPE, **kwargs):
    return train(tiny_config(pack, out, **recipe), out, **kwargs)


class StopAt(Callback):
    def __init__(self, step):
        self.step, self.now = step, 0

    def on_step_end(self, info):
        self.now = info["step"]

    def stop_requested(self):
        return self.now >= self.step


def history(run_dir: Path) -> dict:
    """What the run did, step by step: the live branch of its ledger, the LR of each step (the
    last record of a step: a resumed run's), and where it ended."""
    ledger, skipped = read_sample_log(run_dir / "samples.jsonl")
    assert skipped == 0
    lr = {}
    for record in read_metrics(run_dir / "metrics.jsonl"):
        if record["type"] == "step":
            lr[record["step"]] = record["lr"]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"ledger": [(r["step"], r["epoch"], r["samples"]) for r in ledger], "lr": lr,
            "step": summary["step"], "status": summary["status"]}


@pytest.fixture(scope="module")
def stored_tiny_pack(s3_server, tiny_pack):
    """tiny_pack (the very shards `uninterrupted` reads) on the session's SeaweedFS."""
    url = f"s3://{s3_server.make_bucket()}/tiny_pack"
    upload_tree(str(tiny_pack), open_storage(url, s3_server.settings()), "")
    return url


def train_shard_bytes(pack) -> dict:
    index = json.loads((Path(pack) / "index.json").read_text())
    return {shard["name"]: sum(f["size"] for f in shard["files"])
            for shard in index["splits"]["train"]["shards"]}


def downloads_per_pass(log_dir: Path, world: int) -> list[Counter]:
    """{shard: downloads} of each pass over the train split, both ranks together, from msrun's
    worker logs: a rank's downloads after its k-th `epoch time:` line (core.train.loop's monitor
    line; the next epoch's pipeline is made after it) belong to its pass k."""
    passes: list[Counter] = []
    for rank in range(world):
        k = 0
        for line in (log_dir / f"worker_{rank}.log").read_text().splitlines():
            found = re.search(r"shard (\S+) streamed from ", line)
            if found:
                passes.extend(Counter() for _ in range(k + 1 - len(passes)))
                passes[k][found.group(1)] += 1
            elif "epoch time: " in line:
                k += 1
    return passes


@pytest.fixture(scope="module")
def uninterrupted(tiny_pack, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    summary = in_process(tiny_pack, out)
    assert summary["step"] == STEPS and summary["steps_per_epoch"] == PER_EPOCH
    done = history(out)
    assert [step for step, _, _ in done["ledger"]] == list(range(1, STEPS + 1))
    assert all(len(samples) == GLOBAL_BATCH for _, _, samples in done["ledger"])
    assert sorted(done["lr"]) == list(range(1, STEPS + 1))
    return done


def test_two_processes_stopped_by_sigterm_resume_on_one(tiny_pack, stored_tiny_pack, s3_server,
                                                        tmp_path, launched,  # noqa: F811
                                                        uninterrupted):
    """The 2-process run streams the pack from S3 into one node cache (MNV3_CACHE_DIR: msrun's
    ranks share <cache>/stream/<bucket>_<prefix>_<hash>/) limited to the train split's 12 shards
    (of the pack's 18); the resume on one process reads the local pack in this process (the
    fastest; a streamed run is specified to give the staged pack's samples, so the ledger, LR and
    steps must still equal the uninterrupted local run's).

    Why not the README's smaller sizing ((window + 2 x prefetch) shards: 7 here): at this scale
    each rank's input pipeline reads its whole epoch (27 samples) ahead, and rank 0 (which alone
    writes the ledger, metrics and checkpoints) starts each epoch a moment after rank 1, so the
    ranks read up to a whole epoch apart and a cache below the split evicts what the other rank
    reads next (measured: 16 to 19 downloads of the 12 shards in each pass after the first, some
    by the same rank twice; the limit itself held)."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    shard_bytes = train_shard_bytes(tiny_pack)
    limit = sum(shard_bytes.values())
    streamed = {**PER_DEVICE_RECIPE, "data.stream": True, "data.prefetch_shards": 2,
                "data.cache_limit_gb": limit / 1024 ** 3}
    # rank 0 SIGTERMs the launcher at step 3; the ranks agree to stop at their next stop check
    # (every 10 steps): step 10, one step into the 4th epoch
    proc = launched.start(command_line(stored_tiny_pack, out, "--nproc", "2", recipe=streamed),
                          {**hooked(MNV3_TEST_SIGTERM_AT="3"), **s3_server.env(),
                           "MNV3_CACHE_DIR": str(cache)})
    assert launched.wait(proc, 300) == 0, launched.output()[-6000:]
    assert "injected SIGTERM" in launched.output()
    stopped = history(out)
    assert stopped["status"] == "stopped" and stopped["step"] == 10, launched.output()[-3000:]
    assert "rank 1/2 reads shard 1 of 2 of each global batch" in launched.output()
    ckpt_meta = _checkpoint_meta(out, 10)
    assert (ckpt_meta["kind"], ckpt_meta["world"], ckpt_meta["global_batch"]) == ("stop", 2, 18)
    # how a platform's SIGTERM ends a multi-rank job: every rank stops at the step they agreed
    # on, one stop checkpoint, exit 0 within the default grace period (past it the launcher
    # SIGKILLs the ranks and fails the job)
    text = launched.output()
    for rank in (0, 1):
        assert f"rank {rank} finished: stopped at step 10" in text
    assert "(grace period 30 s)" in text
    stops = [r for r in read_metrics(out / "metrics.jsonl")
             if r["type"] == "checkpoint" and r["kind"] == "stop"]
    assert [r["step"] for r in stops] == [10]

    # streamed: both ranks read through one node cache, which fetched each shard once per pass
    # (with the whole split fitting, once in all: nothing was evicted), never over its limit
    (node_cache,) = (cache / "stream").iterdir()
    logs = out / "msrun_logs"
    for rank in (0, 1):  # each rank says which cache it opened
        assert str(node_cache) in (logs / f"worker_{rank}.log").read_text(), rank
    passes = downloads_per_pass(logs, 2)
    assert all(count == 1 for downloads in passes for count in downloads.values()), passes
    assert sum(passes, Counter()) == Counter(shard_bytes.keys()), passes
    # and nobody else on the node (the launcher opens the cache too) downloaded a shard
    assert text.count(" streamed from ") == sum(sum(p.values()) for p in passes), text[-6000:]
    # the node's peak (shards on disk plus downloads reserved, cloud.storage.shard_cache) within
    # the limit: the shards in flight are inside it, and it was never overdrawn
    state = json.loads((node_cache / ".cloud-stream" / "state.json").read_text())
    assert 0 < state["peak_bytes"] <= limit, (state["peak_bytes"], limit)

    # one process, the same recipe (9 per device): it keeps the global batch, 18 a step
    summary = in_process(tiny_pack, out, PER_DEVICE_RECIPE, resume=str(_checkpoint(out, 10)))
    assert summary["start_step"] == 10 and summary["world"] == 1
    done = history(out)
    assert done == uninterrupted


def test_one_process_stopped_mid_epoch_resumes_on_three(tiny_pack, tmp_path, launched,  # noqa: F811
                                                        uninterrupted):
    out = tmp_path / "run"
    assert in_process(tiny_pack, out, callbacks=(StopAt(4),))["step"] == 4  # 1 step into epoch 2
    proc = launched.start(command_line(tiny_pack, out, "--nproc", "3", "--resume", "auto"))
    assert launched.wait(proc, 300) == 0, launched.output()[-6000:]
    text = launched.output()
    assert "resuming global step 4 (global batch 18) of a 1-process run on 3 process(es): 6 per device" in text
    done = history(out)
    assert done == uninterrupted
    assert json.loads((out / "summary.json").read_text())["world"] == 3


def _checkpoint(run_dir: Path, step: int) -> Path:
    (found,) = (run_dir / "checkpoints").glob(f"*-s{step:08d}.ckpt")
    return found


def _checkpoint_meta(run_dir: Path, step: int) -> dict:
    from core import checkpoint as ckpt
    return ckpt.load(_checkpoint(run_dir, step)).meta


def test_a_global_batch_the_process_count_does_not_divide_is_one_line_before_msrun(tiny_dataset, tmp_path):
    import subprocess
    import sys

    from tests.paths import REPO
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "launcher/local.py", "train", "--nproc", "3", "--dataset_path",
                           str(tiny_dataset), "--output_dir", str(out), "data.global_batch_size=8"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: data.global_batch_size 8 does not divide among 3 processes; run on a number of "
        "processes that divides it (1, 2, 4, 8), or set data.global_batch_size to a multiple of 3 "
        "for a new run"]
    assert "msrun" not in proc.stdout and not out.exists()
