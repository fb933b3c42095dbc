"""The test instrumentation lives in tests/hooks, not in the product: no product module reads
its variables or carries its callbacks, and its DebugDump records what a run really read, also
when the run resumes part-way through an epoch."""
from __future__ import annotations

import json
from pathlib import Path

from core.train.loop import train
from tests.core_fixtures import tiny_config
from tests.hooks.train_hooks import DebugDump

from tests.paths import REPO
PRODUCT = ("core", "cloud", "launcher", "bench")


def test_product_code_carries_no_test_hooks():
    found = []
    for package in PRODUCT:
        for path in sorted((REPO / package).rglob("*.py")):
            text = path.read_text()
            for marker in ("MNV3_DEBUG_", "MNV3_TEST_", "class CrashAt", "class DebugDump"):
                if marker in text:
                    found.append(f"{path.relative_to(REPO)}: {marker}")
    assert found == []


def dumped_run(tiny_dataset, out: Path, resume=None) -> dict:
    """One epoch of 7 steps (60 images, batch 8), a checkpoint every 3 steps; what it read."""
    cfg = tiny_config(tiny_dataset, out, **{"train.epochs": 1, "train.eval_at_end": False,
                                            "checkpoint.interval_steps": 3})
    dump = DebugDump(out / "dump")
    with dump.recording():
        summary = train(cfg, out, resume=resume, callbacks=(dump,))
    assert summary["status"] == "completed" and summary["step"] == 7
    return json.loads((out / "dump" / "rank0.json").read_text())


def test_a_resumed_epoch_records_the_files_it_read_not_the_first_ones(tiny_dataset, tmp_path):
    """Resumed at step 3, the pipeline starts at the 25th image of the epoch's order: the dump
    must name images 25.. of the uninterrupted run's order, not images 1.. again."""
    train_root = str(Path(tiny_dataset) / "train")
    full = dumped_run(tiny_dataset, tmp_path / "full")
    order = full["order"][train_root]
    assert len(set(order[:56])) == 56  # one epoch: no image twice
    checkpoint = tmp_path / "full" / "checkpoints" / "mobilenetv3-e0000-s00000003.ckpt"
    resumed = dumped_run(tiny_dataset, tmp_path / "resumed", resume=str(checkpoint))["order"][train_root]
    assert len(resumed) >= 4 * 8  # the 4 steps left
    assert resumed == order[24:24 + len(resumed)]
