"""Real data-parallel runs on CPU through msrun: two ranks on one machine, two "nodes", a
crashing rank, and SIGTERM. Every process started here carries a tag in its environment and
is killed by pid at the end of its test, whatever happened.

Per-rank facts come from test instrumentation that these tests inject (tests/hooks, put on the
processes' PYTHONPATH; the product carries none): MNV3_TEST_DUMP_DIR makes each rank write its
trainable weights and the image files its input pipeline read; MNV3_TEST_CRASH_AT=R:S makes
rank R raise at step S.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.paths import REPO
VENV_BIN = str(Path(sys.executable).parent)
HOOKS = REPO / "tests" / "hooks"
TINY = ["data.image_size=32", "data.eval_resize=36", "data.batch_size=8", "data.eval_batch_size=7",
        "data.workers=1", "optim.lr=0.01", "optim.warmup_epochs=0", "train.log_interval=1",
        "--device_target", "CPU"]


class Launched:
    """Processes of one test: output collected with arrival times, all killed at the end."""

    def __init__(self):
        self.tag = uuid.uuid4().hex
        self.procs: list[subprocess.Popen] = []
        self.lines: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def start(self, argv, extra_env=None) -> subprocess.Popen:
        env = dict(os.environ, PATH=os.pathsep.join([VENV_BIN, os.environ.get("PATH", "")]),
                   PYTHONUNBUFFERED="1", GLOG_v="3", MNV3_TEST_TAG=self.tag)
        env.update(extra_env or {})
        proc = subprocess.Popen([sys.executable, *map(str, argv)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()
        self.procs.append(proc)
        return proc

    def _read(self, proc):
        for raw in iter(proc.stdout.readline, b""):
            with self.lock:
                self.lines.append((time.monotonic(), raw.decode("utf-8", "replace").rstrip()))

    def output(self) -> str:
        with self.lock:
            return "\n".join(text for _, text in self.lines)

    def first_time(self, needle: str):
        with self.lock:
            return next((t for t, text in self.lines if needle in text), None)

    def wait(self, proc, timeout: float) -> int:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after {timeout} s:\n{self.output()[-6000:]}")

    def tagged(self) -> list:
        """Every live process started by this test, children and msrun's workers included."""
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("MNV3_TEST_TAG") == self.tag \
                        and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def cleanup(self):
        for proc in self.tagged():
            try:
                proc.kill()
            except psutil.Error:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def hooked(**variables) -> dict:
    """Environment that loads tests/hooks/sitecustomize.py, with its MNV3_TEST_* variables."""
    path = os.pathsep.join(filter(None, [str(HOOKS), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, **variables}


@pytest.fixture
def launched():
    procs = Launched()
    yield procs
    procs.cleanup()


def read_dumps(folder: Path, world: int = 2):
    weights = [np.load(folder / f"rank{r}.npz") for r in range(world)]
    records = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(world)]
    return weights, records


def assert_data_parallel(dataset: Path, dump_dir: Path, checkpoint: Path):
    """Ranks read disjoint shards covering the data (training: the 3 whole global batches of 16
    of the 60 images; evaluation: every image), and end with identical weights that equal the
    checkpoint rank 0 wrote."""
    from core.checkpoint import load
    weights, records = read_dumps(dump_dir)
    assert [r["rank"] for r in records] == [0, 1] and all(r["world"] == 2 for r in records)
    for split, total in (("train", 48), ("val", 30)):
        root = str(dataset / split)
        shards = [set(r["read"].get(root, [])) for r in records]
        if split == "val" and not any(shards):
            continue  # no evaluation in this run
        assert shards[0] and shards[1], split
        assert not shards[0] & shards[1], f"{split} shards overlap"
        assert len(shards[0] | shards[1]) == total, split
    names = weights[0].files
    assert len(names) > 100 and set(names) == set(weights[1].files)
    for name in names:
        assert np.array_equal(weights[0][name], weights[1][name]), name
    saved = load(checkpoint).params
    for name in names:
        assert np.array_equal(saved[name].asnumpy(), weights[0][name]), name


def checkpoint_files(run_dir: Path) -> list[str]:
    folder = run_dir / "checkpoints"
    return sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def test_two_ranks_on_one_machine(tiny_dataset, tmp_path, launched):
    out, dumps = tmp_path / "run", tmp_path / "dumps"
    proc = launched.start(["launcher/local.py", "train", "--nproc", "2", "--dataset_path",
                           tiny_dataset, "--output_dir", out, "train.epochs=1", *TINY],
                          hooked(MNV3_TEST_DUMP_DIR=str(dumps)))
    assert launched.wait(proc, 240) == 0, launched.output()[-6000:]
    text = launched.output()
    assert "[rank 0] " in text and "[rank 1] " in text
    assert "rank 0/2 reads shard 0 of 2" in text and "rank 1/2 reads shard 1 of 2" in text
    # one checkpoint set, written once: the final checkpoint and the best one
    assert checkpoint_files(out) == ["best.ckpt", "mobilenetv3-e0001-s00000003.ckpt"]
    assert len(records(out, "checkpoint")) == 1 and len(records(out, "eval")) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world"] == 2 and summary["status"] == "completed"
    assert (out / "train.log").exists() and (out / "train.rank1.log").exists()
    assert {p.name for p in (out / "msrun_logs").iterdir()} >= {"worker_0.log", "worker_1.log"}
    final = out / "checkpoints" / "mobilenetv3-e0001-s00000003.ckpt"
    assert_data_parallel(Path(tiny_dataset), dumps, final)
    assert not launched.tagged(), "processes outlived the launcher"


def test_two_nodes_meet_at_a_master_on_localhost(tiny_dataset, tmp_path, launched):
    from launcher.distributed import free_port
    port, dumps = free_port(), tmp_path / "dumps"
    nodes = []
    for node in (0, 1):
        nodes.append(launched.start(
            ["launcher/distributed.py", "--nproc", "1", "--nnodes", "2", "--node_rank", node,
             "--master_addr", "127.0.0.1", "--master_port", port, "--dataset_path", tiny_dataset,
             "--output_dir", tmp_path / f"node{node}", "--cache_dir", tmp_path / "cache",
             "train.epochs=1", "train.eval_at_end=false", *TINY],
            hooked(MNV3_TEST_DUMP_DIR=str(dumps))))
    for proc in nodes:
        assert launched.wait(proc, 240) == 0, launched.output()[-6000:]
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    assert checkpoint_files(node0) == ["mobilenetv3-e0001-s00000003.ckpt"]
    assert checkpoint_files(node1) == [] and not (node1 / "metrics.jsonl").exists()
    assert (node1 / "train.rank1.log").exists()
    assert (node0 / "msrun_logs" / "node0" / "worker_0.log").exists()
    assert (node1 / "msrun_logs" / "node1" / "worker_1.log").exists()
    final = node0 / "checkpoints" / "mobilenetv3-e0001-s00000003.ckpt"
    assert_data_parallel(Path(tiny_dataset), dumps, final)


def test_a_crashing_rank_ends_the_job(tiny_dataset, tmp_path, launched):
    out = tmp_path / "run"
    proc = launched.start(["launcher/local.py", "train", "--nproc", "2", "--dataset_path",
                           tiny_dataset, "--output_dir", out, "train.epochs=20",
                           "train.eval_at_end=false", *TINY],
                          hooked(MNV3_TEST_CRASH_AT="1:2"))
    code = launched.wait(proc, 240)
    ended = time.monotonic()
    crashed = launched.first_time("injected crash (MNV3_TEST_CRASH_AT) on rank 1")
    assert code != 0, launched.output()[-4000:]
    assert crashed is not None, launched.output()[-4000:]
    assert ended - crashed < 60, f"job took {ended - crashed:.0f} s to end after the crash"
    assert "[launcher] msrun exited with code" in launched.output()
    time.sleep(1)
    assert not launched.tagged(), "ranks outlived the failed job"


# --- the stop callback, in this process ----------------------------------------------------------


def test_sigterm_handler_turns_into_stop_requested():
    from launcher.signals import StopOnSignal
    previous = signal.getsignal(signal.SIGTERM)
    stop = StopOnSignal().install()
    try:
        stop.on_train_begin({"world": 1})
        assert not stop.stop_requested() and stop.time_left(30) is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.stop_requested()
        assert 27.0 < stop.time_left(30, margin_s=2) <= 28.0  # what the final upload may take
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) is previous


def test_ranks_stop_together_at_a_sync_step():
    from launcher.signals import StopOnSignal
    calls = []

    def other_rank_asked(values, world):  # two ranks, the other of which was asked to stop
        calls.append(world)
        return np.asarray(values, np.float64) + 1.0

    stop = StopOnSignal(sync_every=3, all_reduce=other_rank_asked)
    stop.on_train_begin({"world": 2})
    assert [stop.stop_requested() for _ in range(2)] == [False, False]  # no collective yet
    assert stop.stop_requested() and calls == [2]  # step 3: the other rank's request
    assert stop.stop_requested() and calls == [2]
