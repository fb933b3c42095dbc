"""Starting from other weights: fine-tuning with a new classifier, model-zoo checkpoints, EMA."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from core import checkpoint as ckpt
from core.nn.model import build_model
from core.train.loop import train
from tests.core_fixtures import tiny_config

from tests.paths import REPO


def test_pretrained_with_other_class_count_replaces_only_the_classifier(tiny_dataset, tmp_path):
    ms.set_seed(7)
    source = build_model("mobilenet_v3_small", 1000)  # "ImageNet" weights: 1000 classes
    ms.save_checkpoint(source, str(tmp_path / "imagenet.ckpt"))
    fresh = ckpt.load_pretrained(build_model("mobilenet_v3_small", 10), tmp_path / "imagenet.ckpt",
                                 ("classifier.3.",))
    assert fresh == ["classifier.3.weight", "classifier.3.bias"]
    # and the trainer starts from them: after training, backbone weights moved from the source
    out = tmp_path / "run"
    cfg = tiny_config(tiny_dataset, out, **{"train.epochs": 1, "train.eval_at_end": False})
    train(cfg, out, pretrained=str(tmp_path / "imagenet.ckpt"))
    final = ckpt.load(next((out / "checkpoints").glob("mobilenetv3-*.ckpt")))
    src = source.parameters_dict()
    moved = np.abs(final.params["features.0.0.weight"].asnumpy() - src["features.0.0.weight"].asnumpy()).max()
    assert 0 < moved < 0.5 * np.abs(src["features.0.0.weight"].asnumpy()).max()
    assert final.params["classifier.3.weight"].shape == (10, 1024)


def test_pretrained_from_another_architecture_is_refused(tmp_path):
    ms.save_checkpoint(build_model("modelzoo", 10), str(tmp_path / "zoo.ckpt"))
    with pytest.raises(ckpt.CheckpointError, match="does not fit this model"):
        ckpt.load_pretrained(build_model("mobilenet_v3_small", 10), tmp_path / "zoo.ckpt", ("classifier.3.",))


def test_modelzoo_checkpoint_evaluates_through_the_launcher(tiny_dataset, tmp_path):
    """A checkpoint as the model-zoo scripts write it (its names, optimizer state beside the
    weights, no runner metadata) evaluates with model.arch=modelzoo and the dataset's classes."""
    ms.set_seed(3)
    zoo = build_model("modelzoo", 10)
    params = [{"name": p.name, "data": p} for p in zoo.get_parameters()]
    params += [{"name": "moments." + p.name, "data": ms.Tensor(np.zeros(p.shape, np.float32))}
               for p in zoo.trainable_params()]
    params += [{"name": "global_step", "data": ms.Tensor(np.array([1000], np.int32))}]
    ms.save_checkpoint(params, str(tmp_path / "mobilenetv3-370_1251.ckpt"))
    result = subprocess.run(
        [sys.executable, str(REPO / "launcher" / "local.py"), "eval", "--checkpoint_path",
         str(tmp_path / "mobilenetv3-370_1251.ckpt"), "--dataset_path", str(tiny_dataset),
         "model.arch=modelzoo", "data.image_size=32", "data.eval_resize=36", "data.batch_size=8",
         "--output_dir", str(tmp_path / "eval")],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=dict(os.environ, GLOG_v="3"))
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert record["images"] == 30 and np.isfinite(record["Loss"])


def test_sgd_with_ema_trains_and_saves_the_average(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset, tmp_path, **{"optim.name": "sgd", "optim.lr": 0.05,
                                                 "train.ema_decay": 0.9, "train.epochs": 1})
    summary = train(cfg, tmp_path)
    assert summary["final_eval"]["images"] == 30
    state = ckpt.load(summary["final_checkpoint"])
    ema = state.params["ema.features.0.0.weight"].asnumpy()
    live = state.params["features.0.0.weight"].asnumpy()
    assert ema.shape == live.shape and not np.array_equal(ema, live)
    assert any(n.startswith("moments.") for n in state.params)  # SGD momentum state
