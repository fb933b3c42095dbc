import math

import mindspore as ms
import numpy as np
import pytest

from core.infer.evaluate import smoothed_cross_entropy, topk_correct
from core.train.loss import LabelSmoothingCrossEntropy
from core.train.lr import warmup_cosine
from core.train.optim import split_decay


def test_warmup_cosine_matches_formula():
    lr = warmup_cosine(0.05, 0.001, warmup_epochs=2, epochs=10, steps_per_epoch=5)
    assert lr.shape == (50,) and lr.dtype == np.float32
    assert lr[0] == 0.0
    assert lr[5] == pytest.approx(0.05 * 5 / 10)
    assert lr[10] == pytest.approx(0.05)
    s = 30
    expected = 0.001 + (0.05 - 0.001) * (1 + math.cos(math.pi * (s - 10) / 40)) / 2
    assert lr[s] == pytest.approx(expected, rel=1e-6)
    assert lr[-1] == pytest.approx(0.001 + 0.049 * (1 + math.cos(math.pi * 39 / 40)) / 2, rel=1e-5)
    assert np.all(np.diff(lr[10:]) <= 0) and np.all(np.diff(lr[:11]) > 0)


def test_no_warmup_starts_at_peak():
    lr = warmup_cosine(0.1, 0.0, 0, 2, 3)
    assert lr[0] == pytest.approx(0.1)


def test_label_smoothing_loss_against_hand_computation():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], np.float32)
    labels = np.array([0, 2], np.int32)
    e = 0.1
    expected = []
    for row, y in zip(logits.astype(np.float64), labels):
        logp = row - np.log(np.exp(row).sum())
        target = np.full(3, e / 2)
        target[y] = 1 - e
        expected.append(-(target * logp).sum())
    loss = LabelSmoothingCrossEntropy(3, e)(ms.Tensor(logits), ms.Tensor(labels))
    assert float(loss.asnumpy()) == pytest.approx(np.mean(expected), rel=1e-5)
    assert smoothed_cross_entropy(logits, labels, e) == pytest.approx(expected)


def test_topk():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05], [0.2, 0.3, 0.5]])
    labels = np.array([1, 1, 0])
    assert topk_correct(logits, labels, 1) == 1
    assert topk_correct(logits, labels, 2) == 2
    assert topk_correct(logits, labels, 5) == 3


def test_weight_decay_skips_bn_and_bias():
    from core.nn.model import build_model
    net = build_model("mobilenet_v3_small", 10)
    decay, no_decay = split_decay(net.trainable_params())
    assert all(p.name.endswith("weight") for p in decay)
    assert {p.name.rsplit(".", 1)[-1] for p in no_decay} == {"gamma", "beta", "bias"}
    assert "features.0.0.weight" in {p.name for p in decay}
