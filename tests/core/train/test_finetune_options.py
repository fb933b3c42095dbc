"""core.train.finetune: backbone LR scale and frozen-backbone epochs, as optimizer parameter groups.

A small network with the same naming as core.nn.model (features..., classifier.3 head) keeps the
graph compiles short; one test checks the grouping on the real model.
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from core.train.finetune import backbone_lr, is_active, param_groups, split_backbone, trainable_at
from core.nn.model import MobileNetV3Small, build_model

HEAD = MobileNetV3Small.CLASSIFIER_PREFIXES


class Tiny(nn.Cell):
    def __init__(self):
        super().__init__()
        self.features = nn.SequentialCell([nn.Conv2d(3, 4, 3, has_bias=False), nn.BatchNorm2d(4), nn.ReLU()])
        self.classifier = nn.SequentialCell([nn.Dense(4, 8), nn.ReLU(), nn.Identity(), nn.Dense(8, 3)])

    def construct(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


def weights(net):
    return {p.name: p.asnumpy().copy() for p in net.trainable_params()}


def run_steps(optimizer_cls, scale, freeze_steps, steps, **opt_kwargs):
    """Weights after each of `steps` SGD/RMSProp steps from the same start and data."""
    ms.set_seed(0)
    net = Tiny()
    lr = np.full(10, 0.1, np.float32)
    groups = param_groups(net.trainable_params(), HEAD, lr, 1e-2, scale, freeze_steps)
    optimizer = optimizer_cls(groups, learning_rate=ms.Tensor(lr), **opt_kwargs)
    step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True,
                                                                                      reduction="mean")),
                               optimizer)
    step.set_train(True)
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((4, 3, 8, 8)).astype(np.float32))
    y = ms.Tensor(np.array([0, 1, 2, 0], np.int32))
    history = [weights(net)]
    for _ in range(steps):
        step(x, y)
        history.append(weights(net))
    return history


def changed(before, after, head: bool):
    return {n for n in before if n.startswith(HEAD) == head and not np.array_equal(before[n], after[n])}


def test_backbone_lr_table():
    lr = np.array([0.0, 0.1, 0.2, 0.3], np.float32)
    np.testing.assert_allclose(backbone_lr(lr, 0.1, 0), [0, 0.01, 0.02, 0.03], rtol=1e-6)
    np.testing.assert_allclose(backbone_lr(lr, 1.0, 2), [0, 0, 0.2, 0.3])
    np.testing.assert_allclose(lr, [0.0, 0.1, 0.2, 0.3])  # the head's table is not touched
    assert not is_active(1.0, 0) and is_active(0.1, 0) and is_active(1.0, 2)
    with pytest.raises(ValueError):
        backbone_lr(lr, -1.0, 0)


def test_groups_on_the_real_model_split_head_decay_and_order():
    net = build_model("mobilenet_v3_small", 10)
    params = net.trainable_params()
    backbone, head = split_backbone(params, HEAD)
    assert [p.name for p in head] == ["classifier.3.weight", "classifier.3.bias"]
    groups = param_groups(params, HEAD, np.full(5, 0.1, np.float32), 4e-5, 0.1, 2)
    lists = [g["params"] for g in groups[:-1]]
    assert sum(len(g) for g in lists) == len(params)
    assert groups[-1] == {"order_params": params}
    decayed = [p.name for g in groups[:-1] if g["weight_decay"] > 0 for p in g["params"]]
    assert "features.0.0.weight" in decayed and "classifier.3.weight" in decayed
    assert not [n for n in decayed if n.endswith(("gamma", "beta", "bias"))]
    head_lr = [g["lr"].asnumpy() for g in groups[:-1] if g["params"][0].name.startswith(HEAD)]
    np.testing.assert_allclose(head_lr[0], 0.1)
    with pytest.raises(ValueError, match="cannot tell the head"):
        param_groups(params, ("nothing.",), np.full(5, 0.1, np.float32), 0.0)


def test_frozen_backbone_does_not_move_until_it_thaws():
    history = run_steps(nn.RMSProp, scale=1.0, freeze_steps=2, steps=3, decay=0.9, momentum=0.9, epsilon=1e-3)
    start, frozen, thawed = history[0], history[2], history[3]
    assert changed(start, frozen, head=False) == set()  # conv, BN gamma/beta: not a bit moved
    assert changed(start, frozen, head=True) == {"classifier.3.weight", "classifier.3.bias"}
    thawed_backbone = changed(frozen, thawed, head=False)
    assert {"features.0.weight", "features.1.gamma", "classifier.0.weight"} <= thawed_backbone


def test_backbone_lr_scale_scales_backbone_updates_only():
    """First SGD step (no momentum history): the update is lr x gradient, so a 0.1 scale gives
    exactly a tenth of the backbone update and the same head update."""
    full = run_steps(nn.Momentum, scale=1.0, freeze_steps=0, steps=1, momentum=0.9)
    low = run_steps(nn.Momentum, scale=0.1, freeze_steps=0, steps=1, momentum=0.9)
    for name in full[0]:
        delta_full, delta_low = full[1][name] - full[0][name], low[1][name] - low[0][name]
        factor = 1.0 if name.startswith(HEAD) else 0.1
        ulps = 4 * np.spacing(np.abs(full[0][name]).max())  # deltas are differences of float32 weights
        np.testing.assert_allclose(delta_low, factor * delta_full, rtol=1e-4, atol=ulps, err_msg=name)
    assert np.abs(full[1]["features.0.weight"] - full[0]["features.0.weight"]).max() > 0


def test_trainable_at_epoch():
    params = build_model("mobilenet_v3_small", 10).trainable_params()
    assert [p.name for p in trainable_at(params, HEAD, 0, 2)] == ["classifier.3.weight", "classifier.3.bias"]
    assert len(trainable_at(params, HEAD, 2, 2)) == len(params)
    assert len(trainable_at(params, HEAD, 0, 0)) == len(params)


def test_group_learning_rates_are_optimizer_parameters_named_learning_rate():
    """The trainer's optimizer_state() must leave the LR tables out of checkpoints, and resume
    skips names starting with 'learning_rate': the group tables are named that way too."""
    ms.set_seed(0)
    net = Tiny()
    lr = np.full(10, 0.1, np.float32)
    opt = nn.Momentum(param_groups(net.trainable_params(), HEAD, lr, 0.0, 0.5, 1),
                      learning_rate=ms.Tensor(lr), momentum=0.9)
    own = {p.name for p in net.get_parameters()}
    extra = sorted(p.name for p in opt.get_parameters() if p.name not in own)
    lr_names = [n for n in extra if "learning_rate" in n]
    assert lr_names and all(n.startswith("learning_rate") for n in lr_names)
