"""core.nn.cpu_ops: the custom CPU kxk convolution must match nn.Conv2d (forward, input and weight
gradients within 1e-5), keep the parameter layout, train identically, and export as Conv2D."""
import mindspore as ms
import mindspore.nn as nn
import numpy as np
import pytest

from core.nn import cpu_ops
from core.nn import model as core_model
from core.nn.kernel_choice import Grad

ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")

pytestmark = pytest.mark.usefixtures("native_kernels")  # fails, never skips, when not built

TOL = 1e-5

def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(1.0, np.abs(a).max()))


# (batch, in, out, groups, size, kernel, stride): every kxk conv kind of MobileNetV3-Small,
# odd sizes, 1x1 planes, strides 1-3, grouped-dense.
CASES = [(2, 8, 8, 8, 9, 3, 1), (2, 8, 8, 8, 10, 3, 2), (3, 5, 5, 5, 11, 5, 2), (2, 6, 6, 6, 7, 5, 1),
         (2, 4, 4, 4, 1, 3, 2), (2, 16, 16, 16, 7, 5, 1), (1, 6, 6, 6, 13, 3, 3),
         (2, 3, 16, 1, 15, 3, 2), (2, 3, 5, 1, 8, 3, 1), (2, 4, 8, 2, 9, 3, 1), (4, 24, 24, 24, 28, 5, 2)]


@pytest.mark.parametrize("n,cin,cout,groups,size,k,stride", CASES)
def test_matches_nn_conv2d(n, cin, cout, groups, size, k, stride):
    rng = np.random.default_rng(size * 31 + k)
    x = ms.Tensor(rng.standard_normal((n, cin, size, size)).astype(np.float32))
    ref = nn.Conv2d(cin, cout, k, stride=stride, pad_mode="pad", padding=(k - 1) // 2, group=groups,
                    has_bias=False)
    assert_same_conv(ref, cpu_ops.FastConv2d(cin, cout, k, stride, groups), x, rng)


def assert_same_cell(ref, fast, x, rng):
    """`fast` computes ref's output, input gradient and parameter gradients on x (for a random
    output gradient) within TOL; returns fast's (y, dx, [parameter gradients]) as numpy arrays."""
    y_ref, y_fast = ref(x).asnumpy(), fast(x).asnumpy()
    assert y_ref.shape == y_fast.shape
    assert rel_err(y_ref, y_fast) < TOL
    dy = ms.Tensor(rng.standard_normal(y_ref.shape).astype(np.float32))
    (dx_ref,), grads_ref = Grad(ref)(x, dy)
    (dx_fast,), grads_fast = Grad(fast)(x, dy)
    assert rel_err(dx_ref.asnumpy(), dx_fast.asnumpy()) < TOL
    assert len(grads_ref) == len(grads_fast)
    for a, b in zip(grads_ref, grads_fast):
        assert rel_err(a.asnumpy(), b.asnumpy()) < TOL
    return y_fast, dx_fast.asnumpy(), [g.asnumpy() for g in grads_fast]


def assert_same_conv(ref, fast, x, rng):
    """`fast`, given `ref`'s weight, computes ref's output, input gradient and weight gradient
    on x within TOL; returns fast's (y, dx, dw) as numpy arrays."""
    fast.weight.set_data(ref.weight.data)
    y_fast, dx_fast, (dw_fast,) = assert_same_cell(ref, fast, x, rng)
    return y_fast, dx_fast, dw_fast


def build(impl, classes=10):
    ms.set_seed(3)
    return core_model.build_model("mobilenet_v3_small", classes, ops_impl=impl)


def test_auto_picks_custom_on_cpu_and_keeps_parameters():
    fast, native = build("auto"), build("native")
    convs = [c for _, c in fast.cells_and_names() if isinstance(c, cpu_ops.FastConv2d)]
    assert len(convs) == 12  # the stem and the 11 depthwise convs
    assert not any(isinstance(c, cpu_ops.FastConv2d) for _, c in native.cells_and_names())
    a = {n: p.asnumpy() for n, p in fast.parameters_and_names()}
    b = {n: p.asnumpy() for n, p in native.parameters_and_names()}
    assert a.keys() == b.keys()
    for name in a:  # same names, shapes and (seeded) initial values
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_train_steps_match_native():
    """Three graph-mode training steps of the whole network with each conv implementation: both
    move the weights and BN statistics, and end equal."""
    from core.config import Config
    from core.train.loss import LabelSmoothingCrossEntropy
    from core.train.optim import build_optimizer
    from core.train.run import NetWithLoss
    cfg = Config()
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((4, 3, 64, 64)).astype(np.float32))
    y = ms.Tensor(rng.integers(0, 10, 4).astype(np.int32))
    results = []
    for impl in ("custom", "native"):
        net = build(impl)
        net.classifier[2].draw(4, 0, 0, 0)  # the same dropout mask for both
        opt = build_optimizer(net.trainable_params(), cfg.optim, ms.Tensor(np.full(10, 0.01, np.float32)))
        step = nn.TrainOneStepCell(NetWithLoss(net, LabelSmoothingCrossEntropy(10, 0.1)), opt)
        step.set_train(True)
        before = {n: p.asnumpy().copy() for n, p in net.parameters_and_names()}
        losses = [float(step(x, y).asnumpy()) for _ in range(3)]
        results.append((losses, {n: p.asnumpy() for n, p in net.parameters_and_names()}))
        assert np.isfinite(losses).all()
        for name in ("features.0.0.weight", "classifier.3.weight", "features.0.1.moving_mean"):
            assert not np.array_equal(before[name], results[-1][1][name]), (impl, name)
    (l1, p1), (l2, p2) = results
    np.testing.assert_allclose(l1, l2, rtol=1e-5, atol=1e-5)
    for name in p1:
        assert rel_err(p2[name], p1[name]) < 1e-4, name


def test_custom_refused_off_cpu(monkeypatch):
    monkeypatch.setattr(cpu_ops, "current_target", lambda: "GPU")
    assert cpu_ops.use_custom("auto") is False
    with pytest.raises(ValueError, match="CPU only"):
        cpu_ops.use_custom("custom")
    assert cpu_ops.use_custom("native") is False


def test_missing_library_falls_back(monkeypatch):
    monkeypatch.setattr(cpu_ops, "available", lambda: False)
    assert cpu_ops.use_custom("auto") is False
    assert type(cpu_ops.conv2d(8, 8, 3, 1, 8, "normal", "auto")) is nn.Conv2d
    with pytest.raises(ValueError, match="make kernels"):
        cpu_ops.use_custom("custom")
