"""Dropout whose masks are drawn on the host from (seed, rank, step).

MindSpore's dropout keeps its random state inside the compiled kernel, where no checkpoint
can reach it: a resumed run would draw different masks than an uninterrupted one. Drawing the
mask from a counter-based generator keyed by the global step makes a resumed run replay the
exact masks, so resume is bit-for-bit (the mask is tiny: batch x features).
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import nn

MASK_LEAF = "dropout_mask"


class ReplayableDropout(nn.Cell):
    def __init__(self, p: float, features):
        """features: per-sample shape, e.g. 1024 or (1280, 1, 1)."""
        super().__init__()
        self.p = float(p)
        self.features = (features,) if isinstance(features, int) else tuple(features)
        self.scale = 1.0 / (1.0 - self.p) if self.p < 1 else 0.0
        self.dropout_mask = ms.Parameter(ms.Tensor(np.ones((1,) + self.features, np.float32)),
                                         name=MASK_LEAF, requires_grad=False)

    def construct(self, x):
        if self.training and self.p > 0:
            return x * self.dropout_mask * self.scale
        return x

    def draw(self, batch: int, seed: int, rank: int, step: int) -> None:
        """Set the mask for the step about to run (called by the trainer, host side)."""
        if self.p <= 0:
            return
        rng = np.random.Generator(np.random.Philox(key=[seed, rank * 1_000_003 + step]))
        keep = (rng.random((batch,) + self.features, dtype=np.float32) >= self.p).astype(np.float32)
        self.dropout_mask.set_data(ms.Tensor(keep))


def replayable_dropouts(net: nn.Cell) -> list[ReplayableDropout]:
    return [cell for _, cell in net.cells_and_names() if isinstance(cell, ReplayableDropout)]


def is_mask(name: str) -> bool:
    return name.endswith(MASK_LEAF)
