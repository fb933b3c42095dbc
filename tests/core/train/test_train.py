"""Real training runs of MobileNetV3-Small at 32 px on real JPEGs (CPU, GRAPH mode)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core import checkpoint as ckpt
from core.train.callbacks import Callback
from core.config import ConfigError
from core.train.metrics import read_metrics
from core.train.loop import train
from tests.core_fixtures import tiny_config


class SeenConfig(Callback):
    def on_train_begin(self, info):
        self.config = info["config"]


@pytest.fixture(scope="module")
def full_run(tiny_dataset, tmp_path_factory):
    """Two epochs uninterrupted: the reference for resume and the loss check."""
    out = tmp_path_factory.mktemp("full")
    cfg = tiny_config(tiny_dataset, out, **{"train.epochs": 3, "optim.lr": 0.02,
                                            "checkpoint.interval_steps": 5})
    seen = SeenConfig()
    summary = train(cfg, out, callbacks=(seen,))
    return cfg, out, summary, seen.config


def test_train_resolves_its_own_copy_of_the_config(full_run):
    cfg, out, _, seen = full_run
    assert cfg.model.depthwise_padding is None  # the caller's config is left as it was
    assert seen.model.depthwise_padding == "symmetric"  # callbacks see the run's
    saved = ckpt.load(out / "checkpoints" / "best.ckpt").meta["config"]
    assert saved["model"]["depthwise_padding"] == "symmetric"


def test_training_lowers_the_loss_and_writes_outputs(full_run):
    cfg, out, summary, _ = full_run
    assert summary["status"] == "completed" and summary["step"] == 21
    records = read_metrics(out / "metrics.jsonl")
    steps = [r for r in records if r["type"] == "step"]
    assert [r["step"] for r in steps] == [2, 4, 6, 7, 8, 10, 12, 14, 16, 18, 20, 21]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert len(epochs) == 3 and epochs[-1]["avg_loss"] < epochs[0]["avg_loss"]
    evals = [r for r in records if r["type"] == "eval"]
    assert evals and evals[-1]["images"] == 30
    assert all(np.isfinite(r["loss"]) for r in steps)
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    # keep=5: step checkpoints at 5, 10, 15, 20 and epoch checkpoints at 7, 14, 21; newest 5 kept
    kept = ["mobilenetv3-e0001-s00000010.ckpt", "mobilenetv3-e0002-s00000014.ckpt",
            "mobilenetv3-e0002-s00000015.ckpt", "mobilenetv3-e0002-s00000020.ckpt",
            "mobilenetv3-e0003-s00000021.ckpt"]
    assert names == ["best.ckpt", "latest.json", *kept]
    # the run directory's manifest (core.checkpoint_store) lists exactly those, newest first
    manifest = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert [e["key"] for e in manifest["checkpoints"]] == kept[::-1] and manifest["step"] == 21
    assert manifest["meta"] == {"kind": "epoch"}  # the last epoch's, also the final one
    saved = json.loads((out / "summary.json").read_text())
    assert saved["final_checkpoint"].endswith("mobilenetv3-e0003-s00000021.ckpt")


def test_checkpoint_holds_everything_to_resume(full_run):
    cfg, out, _, _ = full_run
    state = ckpt.load(out / "checkpoints" / "mobilenetv3-e0003-s00000021.ckpt")
    assert state.meta["step"] == 21 and state.meta["epoch"] == 3
    assert state.meta["classes"][0] == "checkerboard" and len(state.meta["classes"]) == 10
    assert state.meta["config"]["train"]["epochs"] == 3
    names = set(state.params)
    assert "features.0.0.weight" in names and "features.0.1.moving_mean" in names
    assert "global_step" in names and any(n.startswith("moment.") for n in names)
    assert any(n.startswith("mean_square.") for n in names)
    assert int(state.params["global_step"].asnumpy().reshape(-1)[0]) == 21


RESUME_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import launcher.openmp
import numpy as np
from core import checkpoint as ckpt
from core.train.metrics import read_metrics
from core.train.loop import train
from tests.core_fixtures import tiny_config
data, root = sys.argv[2], sys.argv[3]
# system.cpu_threads=1: MindSpore's CPU kernels otherwise choose their parallel split by timing
# their first launches, so float sums differ by an ulp after a resume, and in a network this
# small a few such ulps can grow past any fixed tolerance within an epoch.
overrides = {"train.epochs": 3, "optim.lr": 0.02, "checkpoint.interval_steps": 5,
             "system.cpu_threads": 1}
full, part = root + "/full", root + "/part"
train(tiny_config(data, full, **overrides), full)
first = train(tiny_config(data, part, **overrides, **{"train.max_steps": 10}), part)
resumed = train(tiny_config(data, part, **overrides), part,
                resume=part + "/checkpoints/mobilenetv3-e0001-s00000010.ckpt")
weights = lambda p: {k: v.asnumpy() for k, v in ckpt.load(p).params.items()}
a = weights(full + "/checkpoints/mobilenetv3-e0003-s00000021.ckpt")
b = weights(part + "/checkpoints/mobilenetv3-e0003-s00000021.ckpt")
one_step = weights(full + "/checkpoints/mobilenetv3-e0002-s00000020.ckpt")
print(json.dumps({"first": first["step"], "start": resumed["start_step"], "end": resumed["step"],
                  "same_keys": sorted(a) == sorted(b),
                  "worst": max(float(np.max(np.abs(a[k] - b[k]))) for k in a),
                  "moved": max(float(np.max(np.abs(a[k] - one_step[k]))) for k in a),
                  "steps": [r["step"] for r in read_metrics(part + "/metrics.jsonl") if r["type"] == "step"]}))
"""


def test_resume_mid_epoch_equals_uninterrupted_bit_for_bit(tiny_dataset, tmp_path):
    """Stop at step 10 (mid-epoch 2), resume in a fresh trainer: the same data, augmentations,
    dropout masks, LR position and optimizer state are replayed, so with fixed CPU kernel
    threads the weights at step 21 equal the uninterrupted run's exactly (own process: the
    thread setting is once per process)."""
    from tests.paths import REPO as repo
    proc = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(repo), str(tiny_dataset), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=repo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (r["first"], r["start"], r["end"]) == (10, 10, 21) and r["same_keys"]
    assert r["worst"] == 0.0, f"resume diverged from the uninterrupted run by {r['worst']}"
    assert r["moved"] > 1e-4  # one more step changes the weights: step 20 != step 21
    assert r["steps"] == [2, 4, 6, 7, 8, 10, 12, 14, 16, 18, 20, 21]  # none repeated or missing


class StopAfter(Callback):
    def __init__(self, step):
        self.step, self.now, self.saved = step, 0, []

    def on_step_end(self, info):
        self.now = info["step"]

    def on_checkpoint(self, path, meta):
        self.saved.append((path.name, meta["kind"]))

    def stop_requested(self):
        return self.now >= self.step


def test_stop_request_checkpoints_at_step_boundary(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset, tmp_path, **{"train.log_interval": 1})
    stopper = StopAfter(3)
    summary = train(cfg, tmp_path, callbacks=(stopper,))
    assert summary["status"] == "stopped" and summary["step"] == 3
    assert stopper.saved == [("mobilenetv3-e0000-s00000003.ckpt", "stop")]


def test_num_classes_mismatch_is_refused(tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match="model.num_classes is 5 but .* has 10 class folders"):
        train(tiny_config(tiny_dataset, tmp_path, **{"model.num_classes": 5}), tmp_path)


def test_batch_larger_than_dataset_is_refused(tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match="exceeds the 60 training images"):
        train(tiny_config(tiny_dataset, tmp_path, **{"data.batch_size": 64}), tmp_path)


def test_resume_at_another_global_batch_is_refused_with_what_would_change(full_run, tiny_dataset,
                                                                           tmp_path):
    _, out, _, _ = full_run
    path = out / "checkpoints" / "mobilenetv3-e0001-s00000010.ckpt"
    assert ckpt.load(path).meta["global_batch"] == 8  # recorded beside world and steps_per_epoch
    with pytest.raises(ConfigError) as refused:
        train(tiny_config(tiny_dataset, tmp_path, **{"data.batch_size": 4, "train.epochs": 3}), tmp_path,
              resume=str(path))
    assert str(refused.value) == (
        f"checkpoint {path} was trained at global batch 8 (8 per device x 1), this run's is 4 "
        f"(4 x 1): steps per epoch would go from 7 to 15, and with them the LR schedule and the "
        f"samples of every step after 10 would change; keep the global batch with "
        f"data.global_batch_size=8 (8 per device on 1), or start a new run from it with --pre_trained")
    # the same global batch asked for another way, over another dataset: the steps differ
    with pytest.raises(ConfigError, match=r"^checkpoint .* was written with 7 steps per epoch, this "
                                          r"run has 6 at the same global batch 8 \(the training set "
                                          r"changed\)"):
        train(tiny_config(tiny_dataset, tmp_path, **{"data.batch_size": 4, "data.global_batch_size": 8,
                                                     "data.path": str(_fewer_images(tiny_dataset, tmp_path))}),
              tmp_path, resume=str(path))


def _fewer_images(tiny_dataset, tmp_path):
    """tiny_dataset with 10 of its 60 training images left out."""
    import shutil
    copy = tmp_path / "fewer"
    shutil.copytree(tiny_dataset, copy)
    for folder in sorted((copy / "train").iterdir()):
        sorted(folder.iterdir())[0].unlink()
    return copy


def test_training_graph_normalises_the_uint8_batch_as_the_eval_pipeline_does(tiny_dataset, tmp_path):
    """Training batches leave the pipeline as uint8 NHWC; NetWithLoss transposes and normalises
    them in the graph. The loss must equal the loss on the same pixels normalised by
    MindSpore's own Normalize + HWC2CHW (what eval batches get)."""
    import mindspore as ms
    from mindspore.dataset import vision

    from core.data.pipeline import pixel_normalization
    from core.train.loss import LabelSmoothingCrossEntropy
    from core.train.run import NetWithLoss
    cfg = tiny_config(tiny_dataset, tmp_path)
    mean, std = pixel_normalization(cfg.data)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    reference = np.stack([vision.HWC2CHW()(vision.Normalize(mean, std)(p)) for p in pixels])
    from mindspore import nn
    from mindspore.common.initializer import Normal
    net = nn.SequentialCell([nn.Flatten(), nn.Dense(3 * 32 * 32, 10, weight_init=Normal(0.05))])
    loss_fn = LabelSmoothingCrossEntropy(10, 0.1)
    label = ms.Tensor(np.arange(4, dtype=np.int32))
    in_graph = NetWithLoss(net, loss_fn, (mean, std))(ms.Tensor(pixels), label).asnumpy()
    on_host = NetWithLoss(net, loss_fn)(ms.Tensor(reference), label).asnumpy()
    assert abs(float(in_graph) - float(on_host)) < 1e-6 * max(1.0, abs(float(on_host)))
    wrong = NetWithLoss(net, loss_fn, (mean, [s * 2 for s in std]))(ms.Tensor(pixels), label).asnumpy()
    assert abs(float(wrong) - float(on_host)) > 1e-4  # the comparison can tell
