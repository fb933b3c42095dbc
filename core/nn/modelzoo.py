"""MobileNetV3-Small as the MindSpore model zoo built it (``mobilenetV3_small_x1_0``).

Mirrors ``research/cv/mobilenetV3_small_x1_0/src/mobilenetv3.py`` of mindspore-ai/models
cell for cell, so its checkpoints load by name with ``load_param_into_net``:

    features.0       3x3 conv s2 -> 16 (no bias)
    features.1       BN
    features.2       hswish
    features.3..13   ResUnit blocks: .expand (Unit) .conv1 (depthwise Unit) .se .conv2 (Unit)
    features.14      1x1 conv -> 576 (no bias)
    features.15      BN
    features.16      hswish
    features.17      global average pool (keep dims)
    features.18      1x1 conv -> 1280 (no bias)
    features.19      hswish
    features.20      dropout, only if dropout > 0 (the zoo trained without)
    output           1x1 conv -> classes, with bias; then squeeze to (N, classes)

Differences from torchvision's network (core/nn/model.py): 1280-wide hidden head as a conv,
no dropout by default, classifier is a conv, BN eps 1e-5 / momentum 0.9 (MindSpore
defaults), and channel rounding is ceil-to-8. 2,945,288 trainable parameters at 1000 classes.
Activations are the ONNX-exportable primitives from core.nn.layers (the zoo used the same
formula). Its init (numpy draws after construction) is replaced by the same distributions
drawn through mindspore.common.initializer: same statistics, different values per seed, except
the classifier conv (Normal(0.01) instead of He fan_out: see CLASSIFIER_INIT_STD)."""

from __future__ import annotations

import math

import mindspore.nn as nn
from mindspore import ops
from mindspore.common import initializer as init

from core.nn.dropout import ReplayableDropout
from core.nn.layers import GlobalAvgPool, HSigmoid, HSwish, conv_init

# k, exp, out, SE, activation, stride -- the model zoo's "small" cfg (same as the paper's).
ZOO_SMALL_BLOCKS = (
    (3, 16, 16, True, "relu", 2),
    (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hswish", 2),
    (5, 240, 40, True, "hswish", 1),
    (5, 240, 40, True, "hswish", 1),
    (5, 120, 48, True, "hswish", 1),
    (5, 144, 48, True, "hswish", 1),
    (5, 288, 96, True, "hswish", 2),
    (5, 576, 96, True, "hswish", 1),
    (5, 576, 96, True, "hswish", 1),
)
CLS_CH_SQUEEZE = 576
CLS_CH_EXPAND = 1280  # not scaled by the multiplier in the zoo


def zoo_make_divisible(x: float, divisor: int = 8) -> int:
    """The zoo's rounding: always up to a multiple of divisor (torchvision rounds to nearest)."""
    return int(math.ceil(x / divisor) * divisor)


def _act(name: str) -> nn.Cell:
    return {"relu": nn.ReLU, "hswish": HSwish}[name]()


def _conv(in_ch, out_ch, kernel, stride=1, groups=1, bias=False, weight_init=None) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, pad_mode="pad", padding=kernel // 2,
                     group=groups, has_bias=bias, weight_init=weight_init or conv_init(),
                     bias_init="zeros")


# The classifier conv's init. The zoo drew every conv from He normal with fan_out, the
# classifier too: std sqrt(2 / num_classes), 0.045 at 1000 classes but 0.45 at 10 and 0.82 at 3,
# so with few classes the initial logits are large, the gradient it sends back into the 1280-wide
# head (no BN there) is ~10x the ImageNet one, and the demo recipe diverged (loss 17 at step 10,
# eval loss 1.3e6, chance accuracy; measured). Normal(0.01), as torchvision's classifier and
# core.nn.model's, keeps the start independent of the class count: the same recipe then reaches
# 80.7% on the demo (10 epochs) like the default network.
CLASSIFIER_INIT_STD = 0.01


def _bn(channels: int) -> nn.BatchNorm2d:
    # The zoo used nn.BatchNorm2d defaults: eps 1e-5, momentum 0.9.
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.9, gamma_init="ones", beta_init="zeros")


class Unit(nn.Cell):
    """conv (no bias) + bn [+ act]; names .conv / .bn as in the zoo."""

    def __init__(self, in_ch, out_ch, kernel=1, stride=1, groups=1, act=None):
        super().__init__()
        self.conv = _conv(in_ch, out_ch, kernel, stride, groups)
        self.bn = _bn(out_ch)
        self.use_act = act is not None
        self.act = _act(act) if self.use_act else None

    def construct(self, x):
        x = self.bn(self.conv(x))
        if self.use_act:
            x = self.act(x)
        return x


class SE(nn.Cell):
    """Squeeze-excite with 1x1 convs .conv1/.conv2 (with bias) and a hard-sigmoid gate."""

    def __init__(self, channels: int, ratio: int = 4):
        super().__init__()
        mid = zoo_make_divisible(channels // ratio)
        self.pool = GlobalAvgPool(keep_dims=True)
        self.conv1 = _conv(channels, mid, 1, bias=True)
        self.act1 = nn.ReLU()
        self.conv2 = _conv(mid, channels, 1, bias=True)
        self.act2 = HSigmoid()

    def construct(self, x):
        scale = self.act2(self.conv2(self.act1(self.conv1(self.pool(x)))))
        return x * scale


class ResUnit(nn.Cell):
    """[expand] -> depthwise conv1 -> [se] -> linear conv2, + x when shapes allow."""

    def __init__(self, in_ch, mid_ch, out_ch, kernel, stride, act, use_se):
        super().__init__()
        # The zoo decides on the expand conv by out != mid (not in != mid); kept as is.
        self.first_conv = out_ch != mid_ch
        self.expand = Unit(in_ch, mid_ch, 1, act=act) if self.first_conv else None
        self.conv1 = Unit(mid_ch, mid_ch, kernel, stride, groups=mid_ch, act=act)
        self.use_se = use_se
        if use_se:
            self.se = SE(mid_ch)
        self.conv2 = Unit(mid_ch, out_ch, 1, act=None)
        self.use_short_cut = in_ch == out_ch and stride == 1

    def construct(self, x):
        out = self.expand(x) if self.first_conv else x
        out = self.conv1(out)
        if self.use_se:
            out = self.se(out)
        out = self.conv2(out)
        if self.use_short_cut:
            out = x + out
        return out


class ModelZooMobileNetV3Small(nn.Cell):
    """The zoo's mobilenet_v3_small(multiplier); logits (N, num_classes)."""

    CLASSIFIER_PREFIXES = ("output.",)

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.0):
        super().__init__()
        in_ch = zoo_make_divisible(16 * width_mult)
        layers = [_conv(3, in_ch, 3, stride=2), _bn(in_ch), HSwish()]
        for kernel, exp, out, use_se, act, stride in ZOO_SMALL_BLOCKS:
            out_ch = zoo_make_divisible(out * width_mult)
            layers.append(ResUnit(in_ch, zoo_make_divisible(exp * width_mult), out_ch,
                                  kernel, stride, act, use_se))
            in_ch = out_ch
        squeeze = zoo_make_divisible(CLS_CH_SQUEEZE * width_mult)
        layers += [
            _conv(in_ch, squeeze, 1), _bn(squeeze), HSwish(),
            GlobalAvgPool(keep_dims=True),
            _conv(squeeze, CLS_CH_EXPAND, 1), HSwish(),
        ]
        if dropout > 0:
            layers.append(ReplayableDropout(dropout, (CLS_CH_EXPAND, 1, 1)))
        self.features = nn.SequentialCell(layers)
        self.output = _conv(CLS_CH_EXPAND, num_classes, 1, bias=True,
                            weight_init=init.Normal(CLASSIFIER_INIT_STD))
        self.squeeze = ops.Squeeze(axis=(2, 3))

    def construct(self, x):
        return self.squeeze(self.output(self.features(x)))
