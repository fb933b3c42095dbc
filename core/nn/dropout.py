"""Dropout whose masks are drawn on the host, per sample, from (seed, step, place in the global batch).

MindSpore's dropout keeps its random state inside the compiled kernel, where no checkpoint
can reach it: a resumed run would draw different masks than an uninterrupted one. Drawing the
mask from a counter-based generator keyed by the global step makes a resumed run replay the
exact masks, so resume is bit-for-bit (the mask is tiny: batch x features). Row j of a step's
stream is the mask of the sample at place j of the global batch (global position
step x global batch + j of the data order), and each rank draws only its slice of rows, so a
sample's mask does not depend on the number of processes.
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

    def draw(self, batch: int, seed: int, step: int, first: int = 0) -> None:
        """Set the masks for the step about to run (called by the trainer, host side): rows
        first..first+batch-1 of global step `step`'s stream (this rank's slice of the global
        batch). Philox yields 8 float32 per counter, so rows of a multiple of 8 features are
        reached by a jump; others by drawing the rows before them."""
        if self.p <= 0:
            return
        bits = np.random.Philox(key=[seed, step])
        width = int(np.prod(self.features))
        if width % 8 == 0:
            bits.advance(first * width // 8)
            rows = np.random.Generator(bits).random((batch,) + self.features, dtype=np.float32)
        else:
            rows = np.random.Generator(bits).random((first + batch,) + self.features,
                                                    dtype=np.float32)[first:]
        keep = (rows >= self.p).astype(np.float32)
        self.dropout_mask.set_data(ms.Tensor(keep))


def replayable_dropouts(net: nn.Cell) -> list[ReplayableDropout]:
    return [cell for _, cell in net.cells_and_names() if isinstance(cell, ReplayableDropout)]


def is_mask(name: str) -> bool:
    return name.endswith(MASK_LEAF)
