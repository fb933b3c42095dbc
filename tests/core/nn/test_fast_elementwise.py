"""core.nn.cpu_ops's memory-bound training operators. FastGlobalAvgPool and FastScaleChannels
(squeeze-excite's pool and channel scale, the network's global average pool) must match
MindSpore's mean and broadcast Mul (forward and every gradient, within 1e-5) in real graphs at
MobileNetV3-Small's shapes; FastNormalizeImage (the uint8 NHWC batch to float NCHW) must equal
MindSpore's Transpose/Cast/Sub/RealDiv bit for bit, in a training step too. All leave the
parameters alone and switch back to the native ops with set_fast(False)."""
import mindspore as ms
import mindspore.nn as nn
import numpy as np
import pytest
from mindspore import ops

from core.nn import cpu_ops
from core.nn import layers
from core.nn import model as core_model
from tests.core.nn.test_fast_depthwise import TOL, assert_same_cell, build, rel_err

ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")

pytestmark = pytest.mark.usefixtures("native_kernels")  # fails, never skips, when not built

_grad_inputs = ops.GradOperation(get_all=True, sens_param=True)


class GradInputs(nn.Cell):
    """GradInputs(net)(*inputs, dy) -> the gradient of every input for the output gradient dy."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, *args):
        return _grad_inputs(self.net)(*args)


# (batch, channels, height, width): the SE planes at 224 px (56x56 block 1, 14x14 and 7x7), the
# final 7x7 pool at batch 32, odd and non-square planes, 1x1 planes.
SHAPES = [(2, 16, 56, 56), (3, 96, 14, 14), (32, 576, 7, 7), (2, 5, 9, 11), (4, 7, 1, 1), (1, 3, 2, 5)]


@pytest.mark.parametrize("keep_dims", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_pool_matches_mean(shape, keep_dims):
    rng = np.random.default_rng(sum(shape))
    x = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
    ref, fast = layers.GlobalAvgPool(keep_dims), cpu_ops.FastGlobalAvgPool(keep_dims)
    y_ref, y_fast = ref(x).asnumpy(), fast(x).asnumpy()
    assert y_fast.shape == y_ref.shape == ((shape[0], shape[1], 1, 1) if keep_dims else shape[:2])
    assert rel_err(y_ref, y_fast) < TOL
    dy = ms.Tensor(rng.standard_normal(y_ref.shape).astype(np.float32))
    (dx_ref,), (dx_fast,) = GradInputs(ref)(x, dy), GradInputs(fast)(x, dy)
    assert dx_fast.shape == x.shape
    assert rel_err(dx_ref.asnumpy(), dx_fast.asnumpy()) < TOL


@pytest.mark.parametrize("shape", SHAPES)
def test_scale_matches_broadcast_mul(shape):
    rng = np.random.default_rng(sum(shape) + 1)
    x = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
    s = ms.Tensor(rng.uniform(0, 1, shape[:2] + (1, 1)).astype(np.float32))
    ref, fast = layers.ScaleChannels(), cpu_ops.FastScaleChannels()
    y_ref, y_fast = ref(x, s).asnumpy(), fast(x, s).asnumpy()
    assert rel_err(y_ref, y_fast) < TOL
    dy = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
    (dx_ref, ds_ref), (dx_fast, ds_fast) = GradInputs(ref)(x, s, dy), GradInputs(fast)(x, s, dy)
    assert dx_fast.shape == x.shape and ds_fast.shape == s.shape
    assert rel_err(dx_ref.asnumpy(), dx_fast.asnumpy()) < TOL
    # ds sums H * W products per plane: compare against float64 numpy as well as MindSpore
    ds64 = (dy.asnumpy().astype(np.float64) * x.asnumpy()).sum((2, 3), keepdims=True)
    assert rel_err(ds64, ds_fast.asnumpy()) < TOL
    assert rel_err(ds_ref.asnumpy(), ds_fast.asnumpy()) < TOL


def test_squeeze_excite_matches_native():
    """A whole SE unit (pool, fc1, ReLU, fc2, hard-sigmoid, scale) on the custom operators gives
    the native unit's output, input gradient and fc gradients."""
    rng = np.random.default_rng(11)
    ms.set_seed(4)
    fast = core_model.SqueezeExcitation(96, 24, "custom")
    ref = core_model.SqueezeExcitation(96, 24, "native")
    assert isinstance(fast.pool, cpu_ops.FastGlobalAvgPool)
    assert type(ref.pool) is layers.GlobalAvgPool and type(ref.scale) is layers.ScaleChannels
    for (name, p), (_, q) in zip(fast.parameters_and_names(), ref.parameters_and_names()):
        q.set_data(p.data)
    # fc biases away from zero so the hard-sigmoid gate is in its linear part for some channels
    fast.fc2.bias.set_data(ms.Tensor(rng.uniform(-4, 4, 96).astype(np.float32)))
    ref.fc2.bias.set_data(fast.fc2.bias.data)
    x = ms.Tensor(rng.standard_normal((4, 96, 14, 14)).astype(np.float32))
    _, _, grads = assert_same_cell(ref, fast, x, rng)
    assert len(grads) == 4 and all(np.abs(g).max() > 0 for g in grads)  # fc1, fc2 weight and bias


def test_network_uses_them_and_set_fast_switches_back():
    """Every SE unit and the final pool of the CPU network run the operators; set_fast(False)
    (what export does) turns them back into MindSpore's mean and Mul, with the same output."""
    net = build("custom")
    pools = [c for _, c in net.cells_and_names() if isinstance(c, cpu_ops.FastGlobalAvgPool)]
    scales = [c for _, c in net.cells_and_names() if isinstance(c, cpu_ops.FastScaleChannels)]
    assert len(pools) == 10 and len(scales) == 9  # 9 SE units + the final pool
    assert not any(isinstance(c, (cpu_ops.FastGlobalAvgPool, cpu_ops.FastScaleChannels))
                   for _, c in build("native").cells_and_names())
    net.set_train(False)
    x = ms.Tensor(np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32))
    fast_out = net(x).asnumpy()
    cpu_ops.set_fast(net, False)
    assert not any(c.fast for c in pools + scales)
    assert rel_err(fast_out, net(x).asnumpy()) < TOL


@pytest.mark.parametrize("shape", [(32, 224, 224, 3), (3, 7, 5, 3), (1, 1, 1, 3), (2, 9, 4, 1)])
def test_normalize_is_bit_identical(shape):
    """Every uint8 value 0-255 in every channel (the batch of 32 at 224 px), odd sizes, a single
    pixel, one channel (grey) as well as three."""
    from core.config import Config
    from core.data.normalization import pixel_normalization
    rng = np.random.default_rng(shape[1])
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    flat = pixels.reshape(-1)
    flat[:256] = np.arange(min(256, flat.size), dtype=np.uint8)
    mean, std = pixel_normalization(Config().data)
    mean, std = mean[:shape[3]], std[:shape[3]]
    ref, fast = layers.NormalizeImage(mean, std), cpu_ops.FastNormalizeImage(mean, std)
    x = ms.Tensor(pixels)
    y_ref, y_fast = ref(x).asnumpy(), fast(x).asnumpy()
    assert y_fast.dtype == np.float32 and y_fast.shape == (shape[0], shape[3], shape[1], shape[2])
    np.testing.assert_array_equal(y_fast, y_ref)
    expected = (pixels.transpose(0, 3, 1, 2).astype(np.float32)
                - np.float32(mean).reshape(1, -1, 1, 1)) / np.float32(std).reshape(1, -1, 1, 1)
    np.testing.assert_array_equal(y_fast, expected)
    assert cpu_ops.set_fast(fast, False) == 1  # MindSpore's own ops again, the same numbers
    np.testing.assert_array_equal(fast(x).asnumpy(), expected)


def test_training_step_on_uint8_batches_matches_native():
    """NetWithLoss on the training pipeline's uint8 NHWC batch: the custom normalisation trains
    the same weights as MindSpore's ops (the operator's zero bprop does not disturb autodiff)."""
    from core.config import Config
    from core.train.loss import LabelSmoothingCrossEntropy
    from core.data.normalization import pixel_normalization
    from core.train.optim import build_optimizer
    from core.train.run import NetWithLoss
    cfg = Config()
    rng = np.random.default_rng(8)
    x = ms.Tensor(rng.integers(0, 256, (4, 48, 48, 3), dtype=np.uint8))
    y = ms.Tensor(rng.integers(0, 10, 4).astype(np.int32))
    results = []
    for impl in ("custom", "native"):
        net = build("native")  # only the normalisation differs
        net.classifier[2].draw(4, 0, 0, 0)
        opt = build_optimizer(net.trainable_params(), cfg.optim, ms.Tensor(np.full(10, 0.01, np.float32)))
        with_loss = NetWithLoss(net, LabelSmoothingCrossEntropy(10, 0.1), pixel_normalization(cfg.data), impl)
        assert isinstance(with_loss.normalization, cpu_ops.FastNormalizeImage) == (impl == "custom")
        step = nn.TrainOneStepCell(with_loss, opt)
        step.set_train(True)
        losses = [float(step(x, y).asnumpy()) for _ in range(2)]
        results.append((losses, {n: p.asnumpy() for n, p in net.parameters_and_names()}))
    (l1, p1), (l2, p2) = results
    assert l1 == l2
    for name in p1:
        np.testing.assert_array_equal(p1[name], p2[name], err_msg=name)
