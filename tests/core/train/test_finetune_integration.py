"""Proposed for tests/core/train/test_finetune.py: freeze + backbone LR scale through the real trainer."""
import mindspore as ms
import numpy as np

from core import checkpoint as ckpt
from core.nn.model import build_model
from core.train.loop import train
from tests.core_fixtures import tiny_config


def test_frozen_backbone_then_thawed_with_lower_lr_and_exact_resume(tiny_dataset, tmp_path):
    ms.set_seed(5)
    source = build_model("mobilenet_v3_small", 1000)
    ms.save_checkpoint(source, str(tmp_path / "imagenet.ckpt"))
    src = {n: p.asnumpy() for n, p in source.parameters_and_names()}
    opts = {"train.epochs": 2, "train.eval_at_end": False, "finetune.freeze_backbone_epochs": 1,
            "finetune.backbone_lr_scale": 0.1}
    out = tmp_path / "run"
    train(tiny_config(tiny_dataset, out, **opts), out, pretrained=str(tmp_path / "imagenet.ckpt"))
    files = sorted((out / "checkpoints").glob("mobilenetv3-e*.ckpt"))
    first, second = ckpt.load(files[0]), ckpt.load(files[-1])
    assert not [n for n in first.params if n.startswith("learning_rate")]
    for name in ("features.0.0.weight", "features.0.1.gamma", "features.5.block.2.fc1.weight", "classifier.0.weight"):
        np.testing.assert_array_equal(first.params[name].asnumpy(), src[name], err_msg=name)
        assert not np.array_equal(second.params[name].asnumpy(), src[name]), name
    # BN running statistics still adapt while frozen (documented)
    assert not np.array_equal(first.params["features.0.1.moving_mean"].asnumpy(), src["features.0.1.moving_mean"])
    # resume from the end of the frozen epoch: the same second epoch (float-order noise only,
    # as in test_train's resume test), far below what the epoch changed
    out2 = tmp_path / "resumed"
    train(tiny_config(tiny_dataset, out2, **opts), out2, resume=str(files[0]))
    again = ckpt.load(sorted((out2 / "checkpoints").glob("mobilenetv3-e*.ckpt"))[-1])
    worst = max(float(np.abs(again.params[n].asnumpy() - p.asnumpy()).max()) for n, p in second.params.items())
    moved = max(float(np.abs(second.params[n].asnumpy() - first.params[n].asnumpy()).max())
                for n in second.params if n in first.params and not n.startswith(("global_step",)))
    assert worst <= 5e-5 and moved > 50 * worst, (worst, moved)
