"""Inference graph for CPU: BatchNorm folded into the convs, activations and squeeze-excite fused.

On CPU, eval and predict spend more time between the convolutions than in them: every
BatchNorm, every hard-swish (add, relu6, mul, div) and every squeeze-excite (mean, two 1x1
convs, relu, hard-sigmoid, mul) is its own pass over the activations. ``fuse_for_inference``
rewrites a network that will only be evaluated:

* conv + BN [+ ReLU/hard-swish]: the BN is folded into the conv's weight and a bias
  (w * g / sqrt(v + eps), b - m * g / sqrt(v + eps)); kxk convs served by the custom operator
  (core/nn/cpu_ops.py) then run as one kernel that adds the bias and applies the activation
  (``DepthwiseFwdBias*``), 1x1 convs as one GEMM kernel with bias, activation, and the residual
  add at the end of a residual block (``Pointwise*``): MindSpore's own Conv2D hands oneDNN NCHW
  tensors and its 1x1 path for them was 3-5x slower than onnxruntime's. Other convs (e.g.
  "same" padding at stride 2) keep MindSpore's Conv2D plus one fused bias + activation pass
  (``BiasAct*``).
* squeeze-excite: one kernel (``SqueezeExcite``).
* the global average pool (``MeanHW``) and the classifier (``Linear``, ``LinearHswish``;
  dropout is the identity in inference): MindSpore's ReduceMean and MatMul took over 10x longer
  than onnxruntime's.

Results equal the unfused network up to float rounding (tests/core/nn/test_fuse.py). Only the
project's own units are recognised (others are left as they are), and only where the custom
operator is in use (CPU with the kernel library built, ``system.cpu_ops`` not
``native``): elsewhere the network is returned unchanged. The fused network is for inference
only: its parameters are new tensors, there are no gradients, and export and training use the
network as built.
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from core.nn import cpu_ops
from core.nn.dropout import ReplayableDropout
from core.nn.layers import HSwish
from core.nn.model import InvertedResidual, MobileNetV3Small, SqueezeExcitation

log = logging.getLogger("core.nn.fuse")

ACT_SUFFIX = {None: "", "relu": "Relu", "hswish": "Hswish"}


def activation_name(cell) -> Optional[str]:
    """'relu' / 'hswish' for the activations the kernels implement, else None."""
    if type(cell) is nn.ReLU:
        return "relu"
    if type(cell) is HSwish:
        return "hswish"
    return None


def fold_batchnorm(weight: np.ndarray, bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) of conv-then-BN in inference mode, computed in float64."""
    gamma = bn.gamma.asnumpy().astype(np.float64)
    beta = bn.beta.asnumpy().astype(np.float64)
    mean = bn.moving_mean.asnumpy().astype(np.float64)
    var = bn.moving_variance.asnumpy().astype(np.float64)
    scale = gamma / np.sqrt(var + bn.eps)
    folded = weight.astype(np.float64) * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    return folded.astype(np.float32), (beta - mean * scale).astype(np.float32)


def _pointwise_shape(x, w, *_):
    """out_shape of the Pointwise ops: [N, out channels, H, W]."""
    return [x[0], w[0], x[2], x[3]]


def is_pointwise(conv: nn.Conv2d) -> bool:
    """A plain 1x1 conv (stride 1, one group, no padding): a GEMM per image."""
    pad = conv.padding if isinstance(conv.padding, (tuple, list)) else (conv.padding,)
    return (tuple(conv.kernel_size) == (1, 1) and set(conv.stride) == {1} and conv.group == 1
            and (conv.pad_mode != "pad" or not any(pad)))


class FusedConvBN(nn.Cell):
    """conv + BN (folded) [+ activation] [+ residual], for inference.

    ``construct(x)`` or, with ``residual=True`` (no activation), ``construct(x, shortcut)``.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: Optional[str], name: str,
                 residual: bool = False):
        super().__init__()
        weight, bias = fold_batchnorm(conv.weight.asnumpy(), bn)
        self.weight = Parameter(Tensor(weight), name=f"{name}.weight", requires_grad=False)
        self.bias = Parameter(Tensor(bias), name=f"{name}.bias", requires_grad=False)
        self.in_kernel = isinstance(conv, cpu_ops.FastConv2d) and conv.fast
        self.pointwise = is_pointwise(conv)
        self.residual = residual
        if self.in_kernel:
            out_shape = cpu_ops.output_shape(conv.kernel_size[0], conv.stride[0], conv.out_channels)
            self.op = cpu_ops.aot_op(f"DepthwiseFwdBias{ACT_SUFFIX[act]}", out_shape)
        elif self.pointwise:  # 1x1: one GEMM kernel with bias, activation and residual
            entry = "PointwiseResidual" if residual else f"Pointwise{ACT_SUFFIX[act]}"
            self.op = cpu_ops.aot_op(entry, _pointwise_shape)
        else:
            self.conv2d = conv.conv2d  # the native cell's primitive: same padding and stride
            if residual:
                self.op = cpu_ops.aot_op("BiasAddResidual", lambda x, b, r: x)
            else:
                self.op = cpu_ops.aot_op(f"BiasAct{ACT_SUFFIX[act]}", lambda x, b: x)

    def construct(self, x, shortcut=None):
        if self.pointwise:
            if self.residual:
                return self.op(x, self.weight, self.bias, shortcut)
            return self.op(x, self.weight, self.bias)
        if self.in_kernel:
            y = self.op(x, self.weight, self.bias)
            if self.residual:
                y = y + shortcut
            return y
        y = self.conv2d(x, self.weight)
        if self.residual:
            return self.op(y, self.bias, shortcut)
        return self.op(y, self.bias)


def _conv_bn_act_parts(cell):
    """(conv, bn, act name) when `cell` is the project's conv_bn_act unit the kernels can run."""
    if not isinstance(cell, nn.SequentialCell) or len(cell) not in (2, 3):
        return None
    conv, bn = cell[0], cell[1]
    if not (isinstance(conv, nn.Conv2d) and not conv.has_bias and isinstance(bn, nn.BatchNorm2d)):
        return None
    if conv.dilation != (1, 1) and conv.dilation != (1, 1, 1, 1):
        return None
    act = activation_name(cell[2]) if len(cell) == 3 else None
    if len(cell) == 3 and act is None:
        return None
    return conv, bn, act


class FusedSqueezeExcite(nn.Cell):
    """SqueezeExcitation (torchvision's, hard-sigmoid gate) as one kernel."""

    def __init__(self, se: SqueezeExcitation, name: str):
        super().__init__()
        self.w1 = Parameter(se.fc1.weight.data.copy(), name=f"{name}.fc1.weight", requires_grad=False)
        self.b1 = Parameter(se.fc1.bias.data.copy(), name=f"{name}.fc1.bias", requires_grad=False)
        self.w2 = Parameter(se.fc2.weight.data.copy(), name=f"{name}.fc2.weight", requires_grad=False)
        self.b2 = Parameter(se.fc2.bias.data.copy(), name=f"{name}.fc2.bias", requires_grad=False)
        self.op = cpu_ops.aot_op("SqueezeExcite", lambda x, w1, b1, w2, b2: x)

    def construct(self, x):
        return self.op(x, self.w1, self.b1, self.w2, self.b2)


class FusedInvertedResidual(nn.Cell):
    """InvertedResidual whose units are fused; the residual add rides on the last 1x1 conv."""

    def __init__(self, block: InvertedResidual, name: str):
        super().__init__()
        self.use_residual = block.use_residual
        units = list(block.block)
        fused = [_fuse_unit(u, f"{name}.block.{i}") for i, u in enumerate(units[:-1])]
        parts = _conv_bn_act_parts(units[-1])
        if parts is None or parts[2] is not None:
            raise ValueError(f"{name}: the last unit of an inverted residual must be conv + BN")
        self.body = nn.SequentialCell(fused)
        self.project = FusedConvBN(*parts, name=f"{name}.block.{len(units) - 1}",
                                   residual=self.use_residual)

    def construct(self, x):
        y = self.body(x)
        if self.use_residual:
            return self.project(y, x)
        return self.project(y)


def _fuse_unit(cell, name: str):
    """The fused replacement of one unit, or the unit itself when it is not recognised."""
    parts = _conv_bn_act_parts(cell)
    if parts is not None:
        return FusedConvBN(*parts, name=name)
    if isinstance(cell, SqueezeExcitation):
        return FusedSqueezeExcite(cell, name)
    if isinstance(cell, InvertedResidual):
        return FusedInvertedResidual(cell, name)
    return cell


class FusedLinear(nn.Cell):
    """nn.Dense (with bias, no activation of its own) [+ hard-swish] as one GEMM kernel."""

    def __init__(self, dense: nn.Dense, act: Optional[str], name: str):
        super().__init__()
        self.weight = Parameter(dense.weight.data.copy(), name=f"{name}.weight", requires_grad=False)
        self.bias = Parameter(dense.bias.data.copy(), name=f"{name}.bias", requires_grad=False)
        self.op = cpu_ops.aot_op(f"Linear{ACT_SUFFIX[act]}", lambda x, w, b: [x[0], w[0]])

    def construct(self, x):
        return self.op(x, self.weight, self.bias)


def fuse_classifier(classifier: nn.Cell, name: str = "classifier") -> nn.Cell:
    """The classifier (Dense [+ hard-swish] [+ dropout] ...) as FusedLinear cells; dropout is the
    identity in inference. Returned unchanged when it holds anything else."""
    if not isinstance(classifier, nn.SequentialCell):
        return classifier
    cells, fused, i = list(classifier), [], 0
    while i < len(cells):
        cell = cells[i]
        if isinstance(cell, (ReplayableDropout, nn.Dropout)):
            i += 1
            continue
        if type(cell) is not nn.Dense or not cell.has_bias or cell.activation_flag:
            return classifier
        act = activation_name(cells[i + 1]) if i + 1 < len(cells) else None
        if act not in (None, "hswish"):
            return classifier
        fused.append(FusedLinear(cell, act, f"{name}.{i}"))
        i += 2 if act else 1
    return nn.SequentialCell(fused)


class FusedMobileNetV3Small(nn.Cell):
    """MobileNetV3Small's forward over fused features (a new cell, so MindSpore compiles a new
    graph even when the original network already ran); the global pool is one kernel.

    The leading units, whose activations are the largest (at 224 px the stem and the first two
    blocks: planes of 112x112 and 56x56, up to 29 MB per tensor at batch 32), run on chunks of
    images sized so that a chunk's tensors stay in the L3 cache rather than travel through
    memory between kernels: ``chunk_pixels`` input pixels per chunk (8 images at 224 px, chosen
    by timing chunk sizes and chunked-unit counts on a 32 MB L3; the README has the figure).
    Each image's result is unchanged (no kernel mixes images)."""

    CHUNKED_UNITS = 3
    CHUNK_PIXELS = 8 * 224 * 224

    def __init__(self, features: nn.SequentialCell, classifier: nn.Cell):
        super().__init__()
        self.features = features
        self.pool = cpu_ops.aot_op("MeanHW", lambda x: [x[0], x[1]])
        self.classifier = classifier
        self.chunk_pixels = self.CHUNK_PIXELS

    def construct(self, x):
        n = x.shape[0]
        # graph mode: shapes are constants, the chunk loop is unrolled at compile time
        chunk = max(1, self.chunk_pixels // (x.shape[2] * x.shape[3]))
        if chunk < n:
            parts = []
            for start in range(0, n, chunk):
                y = x[start:start + chunk]
                for i in range(self.CHUNKED_UNITS):
                    y = self.features[i](y)
                parts.append(y)
            x = ops.concat(parts, 0)
        else:
            for i in range(self.CHUNKED_UNITS):
                x = self.features[i](x)
        for i in range(self.CHUNKED_UNITS, len(self.features)):
            x = self.features[i](x)
        x = self.pool(x)
        return self.classifier(x)


def fuse_for_inference(net: nn.Cell, impl: str = "auto") -> nn.Cell:
    """A fused inference copy of `net` (see the module docstring), in eval mode.

    Returns `net` itself (in eval mode) when the custom operator is not in use for `impl` or
    `net` is not the project's MobileNetV3Small. `net` is left as it was.
    """
    net.set_train(False)
    if type(net) is not MobileNetV3Small or not cpu_ops.use_custom(impl, "fused"):
        return net
    units = list(net.features)
    fused = [_fuse_unit(unit, f"features.{i}") for i, unit in enumerate(units)]
    log.info("inference graph: %d of %d feature units fused (BN folded)",
             sum(a is not b for a, b in zip(fused, units)), len(units))
    result = FusedMobileNetV3Small(nn.SequentialCell(fused), fuse_classifier(net.classifier))
    result.set_train(False)
    return result
