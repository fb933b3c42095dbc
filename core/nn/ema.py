"""Exponential moving average of the weights (and BN statistics), updated after each step."""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from core.nn.dropout import is_mask

PREFIX = "ema."


class EMA(nn.Cell):
    """shadow = decay * shadow + (1 - decay) * weight, in one compiled graph per step."""

    def __init__(self, net: nn.Cell, decay: float):
        super().__init__()
        self.decay = decay
        params = [p for p in net.get_parameters() if not is_mask(p.name)]
        self.weights = ms.ParameterTuple(params)
        self.shadows = ms.ParameterTuple(
            [ms.Parameter(p.data.copy(), name=PREFIX + p.name, requires_grad=False) for p in params])
        self.hyper_map = ops.HyperMap()

    def construct(self):
        return self.hyper_map(ops.partial(_update, self.decay), self.shadows, self.weights)

    def state(self) -> list:
        return list(self.shadows)

    def copy_to(self, net: nn.Cell) -> None:
        """Load the averaged weights into another instance of the network (for eval/export)."""
        by_name = {s.name[len(PREFIX):]: s for s in self.shadows}
        for p in net.get_parameters():
            if p.name in by_name:
                p.set_data(by_name[p.name].data.copy())


def _update(decay, shadow, weight):
    return ops.assign(shadow, shadow * decay + weight * (1.0 - decay))
