"""MobileNetV3-Small (Howard et al., arXiv 1905.02244) in MindSpore.

Laid out like torchvision's ``mobilenet_v3_small`` so that parameter names line up with
torchvision's state dict (``features.0.0.weight``, ``features.1.block.0.1.gamma``,
``classifier.3.weight`` ...): importing torchvision weights is then a rename of the BN
fields only (weight->gamma, bias->beta, running_mean->moving_mean,
running_var->moving_variance).

Nothing here reads the environment; the trainer picks the network with ``build_model``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import mindspore.nn as nn
from mindspore import ops
from mindspore.common import initializer as init

from core.nn.dropout import ReplayableDropout
from core.nn.cpu_ops import conv2d, conv_bn_act_cell, global_avg_pool, scale_channels
from core.nn.layers import HSigmoid, HSwish, conv_init
from core.nn.modelzoo import ModelZooMobileNetV3Small

ARCHS = ("mobilenet_v3_small", "modelzoo")


class BlockConfig(NamedTuple):
    kernel: int
    expanded: int
    out: int
    use_se: bool
    activation: str  # "RE" = ReLU, "HS" = hard-swish
    stride: int


# MobileNetV3-Small, paper Table 2 / torchvision (before width scaling).
SMALL_BLOCKS = (
    #           k  exp  out   SE    act  s
    BlockConfig(3, 16, 16, True, "RE", 2),
    BlockConfig(3, 72, 24, False, "RE", 2),
    BlockConfig(3, 88, 24, False, "RE", 1),
    BlockConfig(5, 96, 40, True, "HS", 2),
    BlockConfig(5, 240, 40, True, "HS", 1),
    BlockConfig(5, 240, 40, True, "HS", 1),
    BlockConfig(5, 120, 48, True, "HS", 1),
    BlockConfig(5, 144, 48, True, "HS", 1),
    BlockConfig(5, 288, 96, True, "HS", 2),
    BlockConfig(5, 576, 96, True, "HS", 1),
    BlockConfig(5, 576, 96, True, "HS", 1),
)
STEM_CHANNELS = 16
HIDDEN_CHANNELS = 1024

# torchvision BN: eps 1e-3, momentum 0.01 -> MindSpore keeps 1 - 0.01 of the running stat.
BN_EPS = 1e-3
BN_MOMENTUM = 0.99

# Padding of the stride-2 depthwise convs (model.depthwise_padding): "symmetric" as torchvision,
# "same" as MindCV (pad_mode="same": at even map sizes 0 before, 1 after for k=3), so MindCV
# weights give MindCV's outputs. The stem pads symmetrically in both; stride-1 convs are equal.
# core.nn.cpu_ops.conv2d checks the value (cpu_ops.PADDINGS).


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """torchvision/TF-slim channel rounding: nearest multiple, never below 90% of value."""
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def activation(name: str) -> nn.Cell:
    if name == "RE":
        return nn.ReLU()
    if name == "HS":
        return HSwish()
    raise ValueError(f"unknown activation {name!r}")


def conv_bn_act(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                act: Optional[str] = None, eps: float = BN_EPS, momentum: float = BN_MOMENTUM,
                padding: str = "symmetric", impl: str = "auto") -> nn.SequentialCell:
    """Conv (no bias) + BN [+ activation]: torchvision's Conv2dNormActivation (.0 conv, .1 BN)."""
    layers = [
        conv2d(in_ch, out_ch, kernel, stride, groups, conv_init(), impl, padding),
        nn.BatchNorm2d(out_ch, eps=eps, momentum=momentum, gamma_init="ones", beta_init="zeros"),
    ]
    if act is not None:
        layers.append(activation(act))
    return conv_bn_act_cell(layers, act, impl)


class SqueezeExcitation(nn.Cell):
    """SE with a hard-sigmoid gate; fc1/fc2 are 1x1 convs with bias, as in torchvision."""

    def __init__(self, channels: int, squeeze: int, impl: str = "auto"):
        super().__init__()
        self.pool = global_avg_pool(keep_dims=True, impl=impl)
        self.scale = scale_channels(impl)
        self.fc1 = nn.Conv2d(channels, squeeze, 1, has_bias=True, weight_init=conv_init(),
                             bias_init="zeros")
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1, has_bias=True, weight_init=conv_init(),
                             bias_init="zeros")
        self.gate = HSigmoid()

    def construct(self, x):
        scale = self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))
        return self.scale(x, scale)


class InvertedResidual(nn.Cell):
    """[expand 1x1] -> depthwise kxk -> [SE] -> project 1x1 (linear), residual when shapes match."""

    def __init__(self, in_ch: int, cfg: BlockConfig, width_mult: float = 1.0,
                 depthwise_padding: str = "symmetric", ops_impl: str = "auto"):
        super().__init__()
        expanded = make_divisible(cfg.expanded * width_mult)
        out_ch = make_divisible(cfg.out * width_mult)
        self.use_residual = cfg.stride == 1 and in_ch == out_ch
        layers = []
        if expanded != in_ch:
            layers.append(conv_bn_act(in_ch, expanded, 1, act=cfg.activation, impl=ops_impl))
        layers.append(conv_bn_act(expanded, expanded, cfg.kernel, stride=cfg.stride,
                                  groups=expanded, act=cfg.activation, padding=depthwise_padding,
                                  impl=ops_impl))
        if cfg.use_se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4, 8), ops_impl))
        layers.append(conv_bn_act(expanded, out_ch, 1, act=None, impl=ops_impl))
        self.block = nn.SequentialCell(layers)
        self.out_channels = out_ch

    def construct(self, x):
        if self.use_residual:
            return x + self.block(x)
        return self.block(x)


class MobileNetV3Small(nn.Cell):
    """MobileNetV3-Small with torchvision's structure and init; logits (N, num_classes)."""

    CLASSIFIER_PREFIXES = ("classifier.3.",)

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2,
                 depthwise_padding: str = "symmetric", ops_impl: str = "auto"):
        super().__init__()
        stem = make_divisible(STEM_CHANNELS * width_mult)
        layers = [conv_bn_act(3, stem, 3, stride=2, act="HS", impl=ops_impl)]
        in_ch = stem
        for cfg in SMALL_BLOCKS:
            block = InvertedResidual(in_ch, cfg, width_mult, depthwise_padding, ops_impl)
            layers.append(block)
            in_ch = block.out_channels
        last_conv = 6 * in_ch  # 576 at width 1.0, as torchvision derives it
        layers.append(conv_bn_act(in_ch, last_conv, 1, act="HS", impl=ops_impl))
        self.features = nn.SequentialCell(layers)
        self.pool = global_avg_pool(keep_dims=False, impl=ops_impl)

        hidden = make_divisible(HIDDEN_CHANNELS * width_mult)  # torchvision scales last_channel
        self.classifier = nn.SequentialCell([
            nn.Dense(last_conv, hidden, weight_init=init.Normal(0.01), bias_init="zeros"),
            HSwish(),
            ReplayableDropout(dropout, hidden),
            nn.Dense(hidden, num_classes, weight_init=init.Normal(0.01), bias_init="zeros"),
        ])

    def construct(self, x):
        return self.classifier(self.pool(self.features(x)))


def build_model(arch: str, num_classes: int, width_mult: float = 1.0,
                dropout: Optional[float] = None, bn_momentum: Optional[float] = None,
                depthwise_padding: Optional[str] = None, ops_impl: str = "auto") -> nn.Cell:
    """Return the network named by ``arch`` (one of ARCHS).

    ``dropout=None`` means the architecture's own default: 0.2 for mobilenet_v3_small,
    none for the model-zoo variant (which was trained without it). ``bn_momentum=None`` keeps
    the architecture's BN momentum (0.99 and 0.9, MindSpore convention).
    ``depthwise_padding=None`` is "symmetric"; "same" is MindCV's (mobilenet_v3_small only).
    ``ops_impl`` (system.cpu_ops) runs the convs of mobilenet_v3_small (the
    depthwise convs, the stem and the 1x1 convs outside squeeze-excite): "auto"
    (core.nn.cpu_ops's CPU operators on CPU when its library is built, else nn.Conv2d),
    "native" or "custom"; outputs are equal, only the speed differs.
    """
    padding = depthwise_padding or "symmetric"
    if arch == "mobilenet_v3_small":
        net = MobileNetV3Small(num_classes, width_mult, 0.2 if dropout is None else dropout, padding,
                               ops_impl)
    elif arch == "modelzoo":
        if padding != "symmetric":
            raise ValueError("model.depthwise_padding=same is for mobilenet_v3_small (MindCV "
                             "weights); the model-zoo variant pads symmetrically")
        net = ModelZooMobileNetV3Small(num_classes, width_mult,
                                       0.0 if dropout is None else dropout)
    else:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if bn_momentum is not None:
        set_bn_momentum(net, bn_momentum)
    return net


def set_bn_momentum(net: nn.Cell, momentum: float) -> None:
    """Set the weight kept by every BN running statistic (MindSpore convention).

    Short runs need a lower value than the reference 0.99: with 0.99 the running statistics
    still carry their initial values after a few hundred steps, and eval-mode outputs collapse.
    MindSpore builds the training BN op with its momentum at construction, so rebuild it.
    """
    for _, cell in net.cells_and_names():
        if isinstance(cell, nn.BatchNorm2d):
            cell.momentum = 1.0 - momentum
            cell.bn_train = ops.BatchNorm(is_training=True, epsilon=cell.eps,
                                          momentum=cell.momentum, data_format=cell.format)


def count_parameters(net: nn.Cell) -> int:
    """Number of trainable scalars (BN moving statistics excluded, as in torchvision's count)."""
    return sum(p.size for p in net.trainable_params())
