"""core.nn.model: MobileNetV3-Small must match torchvision's network (size, names, init) and export.

The expected torchvision state-dict layout is written out here from torchvision's structure,
not derived from core.nn.model, so the name test also checks that importing torchvision weights
is a plain rename.
"""

import os

import mindspore as ms
import mindspore.nn as nn
import numpy as np
import onnxruntime as ort
import pytest

from core.nn.dropout import ReplayableDropout, is_mask
from core.nn.model import MobileNetV3Small, build_model, count_parameters

ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")

TORCHVISION_PARAMS = 2_542_856

# torchvision mobilenet_v3_small blocks: kernel, expanded, out, SE (features.1 .. features.11).
TV_BLOCKS = [(3, 16, 16, True), (3, 72, 24, False), (3, 88, 24, False), (5, 96, 40, True),
             (5, 240, 40, True), (5, 240, 40, True), (5, 120, 48, True), (5, 144, 48, True),
             (5, 288, 96, True), (5, 576, 96, True), (5, 576, 96, True)]
TV_SE_SQUEEZE = {16: 8, 96: 24, 240: 64, 120: 32, 144: 40, 288: 72, 576: 144}
BN_RENAME = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
             "running_var": "moving_variance"}


def torchvision_layout(num_classes=1000):
    """[(torchvision name, MindSpore name, shape, trainable)] for mobilenet_v3_small."""
    rows = []

    def conv_bn(prefix, cin, cout, k, groups=1):
        rows.append((f"{prefix}.0.weight", f"{prefix}.0.weight", (cout, cin // groups, k, k), True))
        for tv, msname in BN_RENAME.items():
            trainable = tv in ("weight", "bias")
            rows.append((f"{prefix}.1.{tv}", f"{prefix}.1.{msname}", (cout,), trainable))

    def plain(name, shape):
        rows.append((name, name, shape, True))

    conv_bn("features.0", 3, 16, 3)
    cin = 16
    for i, (k, exp, out, se) in enumerate(TV_BLOCKS, start=1):
        j, p = 0, f"features.{i}.block"
        if exp != cin:
            conv_bn(f"{p}.{j}", cin, exp, 1)
            j += 1
        conv_bn(f"{p}.{j}", exp, exp, k, groups=exp)
        j += 1
        if se:
            sq = TV_SE_SQUEEZE[exp]
            plain(f"{p}.{j}.fc1.weight", (sq, exp, 1, 1))
            plain(f"{p}.{j}.fc1.bias", (sq,))
            plain(f"{p}.{j}.fc2.weight", (exp, sq, 1, 1))
            plain(f"{p}.{j}.fc2.bias", (exp,))
            j += 1
        conv_bn(f"{p}.{j}", exp, out, 1)
        cin = out
    conv_bn("features.12", 96, 576, 1)
    plain("classifier.0.weight", (1024, 576))
    plain("classifier.0.bias", (1024,))
    plain("classifier.3.weight", (num_classes, 1024))
    plain("classifier.3.bias", (num_classes,))
    return rows


def params(net):
    return {name: p for name, p in net.parameters_and_names()}


@pytest.fixture(scope="module")
def net():
    ms.set_seed(0)
    return build_model("mobilenet_v3_small", 1000)


@pytest.fixture(scope="module")
def images():
    return ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32))


def test_layout_table_is_torchvision_size():
    assert sum(int(np.prod(s)) for _, _, s, t in torchvision_layout() if t) == TORCHVISION_PARAMS


def test_parameter_count(net):
    assert isinstance(net, MobileNetV3Small)
    assert count_parameters(net) == TORCHVISION_PARAMS


def test_parameter_names_are_torchvision_renamed(net):
    expected = {msname: (shape, trainable) for _, msname, shape, trainable in torchvision_layout()}
    got = {n: (tuple(p.shape), p.requires_grad) for n, p in params(net).items()
           if not is_mask(n)}
    assert got == expected
    first = [n for n, _ in net.parameters_and_names()][:5]
    assert first == ["features.0.0.weight", "features.0.1.moving_mean",
                     "features.0.1.moving_variance", "features.0.1.gamma", "features.0.1.beta"]
    assert MobileNetV3Small.CLASSIFIER_PREFIXES == ("classifier.3.",)
    head = [n for n in got if n.startswith(MobileNetV3Small.CLASSIFIER_PREFIXES)]
    assert sorted(head) == ["classifier.3.bias", "classifier.3.weight"]


def test_batchnorm_hyperparameters(net):
    bns = [c for _, c in net.cells_and_names() if isinstance(c, nn.BatchNorm2d)]
    assert len(bns) == 34
    for bn in bns:
        assert bn.eps == pytest.approx(1e-3)
        # nn.BatchNorm2d stores 1 - momentum: the weight of the batch statistic (torch's 0.01).
        assert 1.0 - bn.momentum == pytest.approx(0.99)


def test_output_shape_and_eval_is_deterministic(net, images):
    net.set_train(False)
    a = net(images).asnumpy()
    b = net(images).asnumpy()
    assert a.shape == (2, 1000) and a.dtype == np.float32
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


def test_same_seed_same_weights_different_seed_differs(net):
    ms.set_seed(0)
    again = params(MobileNetV3Small(1000))
    ms.set_seed(1)
    other = params(MobileNetV3Small(1000))
    reference = params(net)
    for name, p in reference.items():
        np.testing.assert_array_equal(p.asnumpy(), again[name].asnumpy(), err_msg=name)
    for name in ("features.0.0.weight", "features.6.block.2.fc1.weight", "classifier.3.weight"):
        assert not np.array_equal(reference[name].asnumpy(), other[name].asnumpy()), name


def test_init_statistics(net):
    p = {n: v.asnumpy() for n, v in params(net).items()}
    for name in ("classifier.0.weight", "classifier.3.weight"):
        assert abs(p[name].std() - 0.01) < 0.0005
        assert abs(p[name].mean()) < 0.0005
    for name in ("classifier.0.bias", "classifier.3.bias", "features.9.block.2.fc1.bias"):
        assert not p[name].any()
    # Kaiming normal, fan_out, ReLU gain: std = sqrt(2 / (out_channels * k * k)).
    for name, fan_out in (("features.12.0.weight", 576), ("features.10.block.0.0.weight", 576),
                          ("features.4.block.1.0.weight", 96 * 25)):
        assert p[name].std() == pytest.approx(np.sqrt(2.0 / fan_out), rel=0.05), name
    for name, v in p.items():
        if name.endswith((".gamma", ".moving_variance")):
            assert (v == 1).all(), name
        elif name.endswith((".beta", ".moving_mean")):
            assert not v.any(), name


def test_dropout_only_in_train_mode(net):
    head = net.classifier
    assert isinstance(head[2], ReplayableDropout) and head[2].p == pytest.approx(0.2)
    feats = ms.Tensor(np.random.default_rng(1).standard_normal((4, 576), dtype=np.float32))
    try:
        head.set_train(True)
        head[2].draw(4, seed=1, step=0)
        a = head(feats).asnumpy()
        head[2].draw(4, seed=1, step=1)
        b = head(feats).asnumpy()
        assert not np.array_equal(a, b)
        head[2].draw(4, seed=1, step=0)  # the same step replays the same mask
        np.testing.assert_array_equal(head(feats).asnumpy(), a)
        # a sample's mask follows its place in the global batch, whichever rank holds it:
        # the slices two ranks draw are the rows one process draws
        whole = head[2].dropout_mask.asnumpy()
        halves = []
        for first in (0, 2):
            head[2].draw(2, seed=1, step=0, first=first)
            halves.append(head[2].dropout_mask.asnumpy())
        np.testing.assert_array_equal(np.concatenate(halves), whole)
        head.set_train(False)
        c, d = head(feats).asnumpy(), head(feats).asnumpy()
        np.testing.assert_array_equal(c, d)
    finally:
        net.set_train(False)


def test_width_mult_075_builds_and_runs():
    ms.set_seed(0)
    small = build_model("mobilenet_v3_small", 10, width_mult=0.75)
    p = params(small)
    assert tuple(p["features.0.0.weight"].shape) == (16, 3, 3, 3)  # 12 rounds up to 16
    # last conv = 6 * make_divisible(96 * 0.75) = 432; hidden = make_divisible(1024 * 0.75)
    assert tuple(p["classifier.0.weight"].shape) == (768, 432)
    assert count_parameters(small) < TORCHVISION_PARAMS
    small.set_train(False)
    x = ms.Tensor(np.zeros((1, 3, 64, 64), np.float32))
    assert small(x).shape == (1, 10)


def test_unknown_arch_names_choices():
    with pytest.raises(ValueError, match="mobilenet_v3_small.*modelzoo"):
        build_model("resnet50", 1000)


def _realistic_weights(net, seed):
    """Scale-preserving random weights and BN statistics, so eval logits are O(1).

    At init the eval-mode network shrinks activations to ~1e-9 (fan_out init on depthwise
    convs, BN statistics 0/1), which would make any logits comparison vacuous.
    """
    rng = np.random.default_rng(seed)
    for name, p in net.parameters_and_names():
        shape = tuple(p.shape)
        if name.endswith((".gamma", ".moving_variance")):
            v = rng.uniform(0.8, 1.2, shape)
        elif name.endswith((".beta", ".moving_mean", ".bias")):
            v = rng.normal(0.0, 0.1, shape)
        else:  # conv / dense weight: variance-preserving in fan_in
            v = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
        p.set_data(ms.Tensor(v.astype(np.float32)))


def test_onnx_export_matches_mindspore(tmp_path):
    """core.infer.export switches the CPU custom conv operator (no ONNX mapping) to MindSpore's own:
    the graph holds standard Conv nodes, MindSpore's op computes what the custom one did, and
    onnxruntime's logits match."""
    import onnx

    from core.config import Config
    from core.infer.export import export_model
    from core.nn.cpu_ops import FastConv2d
    ms.set_seed(0)
    model = build_model("mobilenet_v3_small", 1000)
    assert any(isinstance(c, FastConv2d) and c.fast for _, c in model.cells_and_names())
    _realistic_weights(model, seed=3)
    model.set_train(False)
    x = np.random.default_rng(4).standard_normal((2, 3, 224, 224), dtype=np.float32)
    expected = model(ms.Tensor(x)).asnumpy()  # through the custom operator
    assert expected.std() > 0.1  # the comparison means something

    cfg = Config()
    cfg.export.format, cfg.export.batch_size, cfg.data.image_size = "ONNX", 2, 224
    path = export_model(model, cfg, tmp_path, [str(i) for i in range(1000)], "CPU")
    assert path.exists() and os.path.getsize(path) > 1_000_000
    assert not any(isinstance(c, FastConv2d) and c.fast for _, c in model.cells_and_names())
    np.testing.assert_allclose(model(ms.Tensor(x)).asnumpy(), expected, rtol=1e-5, atol=1e-5)
    ops_used = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Conv" in ops_used and not any("Custom" in o for o in ops_used)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert got.shape == (2, 1000)
    assert np.abs(got - expected).max() <= 1e-4
