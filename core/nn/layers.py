"""Layers both architectures build from (core.nn.model, core.nn.modelzoo): hard-swish, hard-sigmoid,
the global average pool, squeeze-excite's channel scale, the training batch's normalisation
and torchvision's conv init. A module of its own so neither network imports the other."""
from __future__ import annotations

import mindspore as ms
import mindspore.nn as nn
import numpy as np
from mindspore import ops
from mindspore.common import initializer as init


class HSwish(nn.Cell):
    """x * relu6(x + 3) / 6 from primitives: nn.HSwish does not export to ONNX."""

    def __init__(self):
        super().__init__()
        self.relu6 = nn.ReLU6()

    def construct(self, x):
        return x * self.relu6(x + 3.0) / 6.0


class HSigmoid(nn.Cell):
    """relu6(x + 3) / 6 from primitives: nn.HSigmoid does not export to ONNX."""

    def __init__(self):
        super().__init__()
        self.relu6 = nn.ReLU6()

    def construct(self, x):
        return self.relu6(x + 3.0) / 6.0


class GlobalAvgPool(nn.Cell):
    """Mean over H and W: [N, C, H, W] -> [N, C] ([N, C, 1, 1] with keep_dims)."""

    def __init__(self, keep_dims: bool = False):
        super().__init__()
        self.keep_dims = keep_dims

    def construct(self, x):
        return x.mean((2, 3), keep_dims=self.keep_dims)


class ScaleChannels(nn.Cell):
    """x * s with one scale per image and channel (s [N, C, 1, 1]): squeeze-excite's gating."""

    def construct(self, x, s):
        return x * s


class NormalizeImage(nn.Cell):
    """The training pipeline's uint8 NHWC batch -> float32 NCHW, (x - mean) / std per channel
    (mean and std on the 0-255 scale)."""

    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = (ms.Tensor(np.asarray(v, np.float32).reshape(1, -1, 1, 1))
                               for v in (mean, std))

    def construct(self, image):
        return (ops.cast(ops.transpose(image, (0, 3, 1, 2)), ms.float32) - self.mean) / self.std


def conv_init() -> init.Initializer:
    """Kaiming normal, fan_out, ReLU gain: torchvision's MobileNetV3 conv init (the model zoo
    drew the same distribution)."""
    return init.HeNormal(mode="fan_out", nonlinearity="relu")
