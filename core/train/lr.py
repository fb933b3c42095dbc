"""Per-step learning rate: linear warmup from 0, then cosine from the peak down to lr_end."""
import math

import numpy as np


def warmup_cosine(lr: float, lr_end: float, warmup_epochs: float, epochs: int,
                  steps_per_epoch: int) -> np.ndarray:
    """One value per global step (float32), as the optimizer indexes it by its step counter.

    step s < W:  lr * s / W                                   (W = warmup steps; starts at 0)
    step s >= W: lr_end + (lr - lr_end) * (1 + cos(pi * (s - W) / (T - W))) / 2
    """
    total = epochs * steps_per_epoch
    warmup = int(warmup_epochs * steps_per_epoch)
    values = np.empty(total, dtype=np.float32)
    for s in range(total):
        if s < warmup:
            values[s] = lr * s / warmup
        else:
            progress = (s - warmup) / max(1, total - warmup)
            values[s] = lr_end + (lr - lr_end) * (1 + math.cos(math.pi * progress)) / 2
    return values
