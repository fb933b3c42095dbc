"""core.nn.cpu_ops.FastPointwise2d and ConvBNAct: the 1x1 convs as GEMM custom operators and the
training BatchNorm + activation as one custom operator must match nn.Conv2d / nn.BatchNorm2d and
the activation cells (forward, every gradient, running statistics; within 1e-5) in real
MindSpore graphs at the shapes of MobileNetV3-Small, and keep the parameter layout (checkpoints
load either way)."""
import mindspore as ms
import mindspore.nn as nn
import numpy as np
import pytest

from core.nn import cpu_ops
from core.nn import model as core_model
from tests.core.nn.test_fast_depthwise import TOL, assert_same_cell, assert_same_conv, build, rel_err

ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")

pytestmark = pytest.mark.usefixtures("native_kernels")  # fails, never skips, when not built


# (batch, in, out, size): the network's 1x1 convs at 224 px (expand, project, last conv), odd
# plane sizes (7x7, 9x9, 1x1), batch 1 and the real batch of 32 (the weight gradient sums over
# N * H * W terms), channel counts that are not multiples of the 8 x 32 tiles.
CASES = [(2, 16, 72, 56), (2, 72, 24, 28), (1, 40, 240, 14), (3, 240, 40, 14), (2, 96, 576, 7),
         (32, 576, 96, 7), (32, 16, 16, 56), (2, 24, 88, 1), (1, 288, 96, 1), (1, 96, 576, 7),
         (5, 13, 7, 9), (1, 3, 5, 3)]


@pytest.mark.parametrize("n,cin,cout,size", CASES)
def test_matches_nn_conv2d(n, cin, cout, size):
    rng = np.random.default_rng(n * 1000 + cin * 7 + size)
    x = ms.Tensor(rng.standard_normal((n, cin, size, size)).astype(np.float32))
    ref = nn.Conv2d(cin, cout, 1, pad_mode="pad", padding=0, has_bias=False)
    fast = cpu_ops.FastPointwise2d(cin, cout)
    fast.min_plane = 0  # the GEMM operator at every plane size, small ones too
    y_fast, dx_fast, dw_fast = assert_same_conv(ref, fast, x, rng)
    assert y_fast.shape == (n, cout, size, size)
    assert dx_fast.shape == x.shape and dw_fast.shape == (cout, cin, 1, 1)


def test_native_switch_computes_the_same():
    """set_fast(False) (what export does) runs nn.Conv2d's own operator on the same weight."""
    rng = np.random.default_rng(5)
    cell = nn.SequentialCell([cpu_ops.FastPointwise2d(24, 88)])
    cell[0].min_plane = 0
    x = ms.Tensor(rng.standard_normal((2, 24, 7, 7)).astype(np.float32))
    fast_out = cell(x).asnumpy()
    assert cpu_ops.set_fast(cell, False) == 1 and not cell[0].fast
    assert rel_err(fast_out, cell(x).asnumpy()) < TOL


class _Marker(nn.Cell):
    """Stands in for the GEMM operator: a plane of 7s, so the test sees which branch ran (the
    GEMM's outputs are bit-identical to nn.Conv2d's on these shapes)."""

    def construct(self, x, w):
        return ms.ops.full((x.shape[0], w.shape[0], x.shape[2], x.shape[3]), 7.0, dtype=ms.float32)


def test_small_planes_run_nn_conv2d_and_large_ones_the_gemm():
    """Under MIN_PLANE pixels per image the cell runs nn.Conv2d's operator, from it on the GEMM
    operator (graph mode decides at compile time from the static shape)."""
    rng = np.random.default_rng(8)
    for size, gemm in ((14, False), (22, False), (23, True), (28, True)):
        assert (size * size >= cpu_ops.FastPointwise2d.MIN_PLANE) == gemm
        ref = nn.Conv2d(96, 144, 1, pad_mode="pad", padding=0, has_bias=False)
        fast = cpu_ops.FastPointwise2d(96, 144)
        fast.weight.set_data(ref.weight.data)
        fast.custom_op = _Marker()
        x = ms.Tensor(rng.standard_normal((2, 96, size, size)).astype(np.float32))
        y_fast = fast(x).asnumpy()
        assert np.all(y_fast == 7.0) == gemm, size
        if not gemm:
            assert np.array_equal(ref(x).asnumpy(), y_fast)


def test_network_uses_it_and_native_does_not():
    fast, native = build("auto"), build("native")
    pointwise = [n for n, c in fast.cells_and_names() if isinstance(c, cpu_ops.FastPointwise2d)]
    # block 1 has no expand conv: its project conv, expand + project of blocks 2-11, the 576 conv
    assert len(pointwise) == 22
    assert not any(".se." in n or ".fc" in n for n in pointwise)  # squeeze-excite stays nn.Conv2d
    assert not any(isinstance(c, cpu_ops.FastPointwise2d) for _, c in native.cells_and_names())


def test_checkpoint_of_native_network_loads(tmp_path):
    """A checkpoint written by the native network (the layout of every existing checkpoint)
    loads into the custom one without a missing or extra parameter, and both compute the same."""
    native = build("native")
    x = ms.Tensor(np.random.default_rng(7).standard_normal((2, 3, 64, 64)).astype(np.float32))
    native.set_train(False)
    expected = native(x).asnumpy()
    path = tmp_path / "native.ckpt"
    ms.save_checkpoint(native, str(path))
    ms.set_seed(11)  # different initial weights, so loading has to change them
    fast = core_model.build_model("mobilenet_v3_small", 10, ops_impl="custom")
    not_loaded, unused = ms.load_param_into_net(fast, ms.load_checkpoint(str(path)))
    assert not not_loaded and not unused
    fast.set_train(False)
    assert rel_err(expected, fast(x).asnumpy()) < 1e-4
    path2 = tmp_path / "fast.ckpt"
    ms.save_checkpoint(fast, str(path2))
    a, b = ms.load_checkpoint(str(path)), ms.load_checkpoint(str(path2))
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].shape == b[name].shape, name


# ---- BatchNorm + activation of a training conv unit (cpu_ops.ConvBNAct) -----------------
# (activation, batch, in, out, size, kernel, groups): units of the network (1x1 expand/project,
# depthwise, stem), plane sizes 56, 7 and 1, batch 1.
UNITS = [("HS", 2, 16, 72, 56, 1, 1), ("RE", 2, 72, 72, 28, 3, 72), (None, 3, 96, 40, 14, 1, 1),
         ("HS", 4, 96, 576, 7, 1, 1), ("HS", 1, 576, 576, 7, 5, 576), ("RE", 2, 24, 88, 1, 1, 1),
         ("HS", 2, 3, 16, 17, 3, 1), (None, 1, 48, 96, 5, 1, 1)]


def _unit(impl, act, cin, cout, kernel, groups, seed):
    unit = core_model.conv_bn_act(cin, cout, kernel, groups=groups, act=act, impl=impl)
    rng = np.random.default_rng(seed)
    for p in unit.get_parameters():  # the same weights, BN affine and statistics on both sides
        scale = 0.5 if p.name.endswith("weight") else 0.3
        base = 1.0 if p.name.endswith(("gamma", "moving_variance")) else 0.0
        value = base + scale * rng.standard_normal(p.shape)
        if p.name.endswith("moving_variance"):
            value = np.abs(value)
        p.set_data(ms.Tensor(value.astype(np.float32)))
    unit.set_train(True)
    return unit


@pytest.mark.parametrize("act,n,cin,cout,size,kernel,groups", UNITS)
def test_conv_bn_act_unit_matches_native(act, n, cin, cout, size, kernel, groups):
    """Training forward, gradients of input, conv weight, gamma and beta, and the running
    statistics after the step equal the native unit's (conv, nn.BatchNorm2d, activation)."""
    fast = _unit("custom", act, cin, cout, kernel, groups, seed=size)
    native = _unit("native", act, cin, cout, kernel, groups, seed=size)
    assert isinstance(fast, cpu_ops.ConvBNAct) and type(native) is nn.SequentialCell
    rng = np.random.default_rng(cin + size)
    x = ms.Tensor((1.5 + rng.standard_normal((n, cin, size, size))).astype(np.float32))
    _, _, grads = assert_same_cell(native, fast, x, rng)
    assert len(grads) == 3  # conv weight, gamma, beta
    stats = {p.name: p.asnumpy() for p in native.get_parameters() if "moving" in p.name}
    for p in fast.get_parameters():
        if "moving" in p.name:
            assert rel_err(stats[p.name], p.asnumpy()) < TOL, p.name


def test_conv_bn_act_eval_and_fuse_see_the_plain_unit():
    """Eval mode runs the cells (moving statistics), and core.nn.fuse recognises the unit."""
    from core.nn import fuse
    fast = _unit("custom", "HS", 16, 24, 1, 1, seed=1)
    native = _unit("native", "HS", 16, 24, 1, 1, seed=1)
    fast.set_train(False)
    native.set_train(False)
    x = ms.Tensor(np.random.default_rng(2).standard_normal((2, 16, 9, 9)).astype(np.float32))
    assert rel_err(native(x).asnumpy(), fast(x).asnumpy()) < TOL
    conv, bn, act = fuse._conv_bn_act_parts(fast)
    assert isinstance(conv, cpu_ops.FastPointwise2d) and isinstance(bn, nn.BatchNorm2d) and act == "hswish"
    assert [n for n, _ in fast.parameters_and_names()] == [n for n, _ in native.parameters_and_names()]
