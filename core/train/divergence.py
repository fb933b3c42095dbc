"""A run whose loss or weights turn non-finite stops before anything of that state is saved.

In fp32 (CPU) a NaN or infinite loss means the weights are lost: the run stops with one line
naming the step and the newest checkpoint written before it. With a loss scale (amp on
Ascend/GPU), MindSpore's overflow handling applies instead (nn.TrainOneStepWithLossScaleCell):
a step whose gradients overflow is skipped, with no optimizer update; those steps are counted
and reported, not fatal.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from core.config import ConfigError


class TrainingDiverged(ConfigError):
    """The loss or the weights became non-finite: one line naming the step and the fix."""


def read_outputs(outputs: list) -> tuple[list[float], list[bool]]:
    """(losses, overflowed) of queued train-step outputs: a loss tensor each (plain step), or
    (loss, overflow, scale) from the loss-scaled step."""
    losses, overflowed = [], []
    for out in outputs:
        if isinstance(out, (tuple, list)):
            losses.append(float(out[0].asnumpy()))
            overflowed.append(bool(out[1].asnumpy()))
        else:
            losses.append(float(out.asnumpy()))
            overflowed.append(False)
    return losses, overflowed


def first_bad_step(losses: list[float], overflowed: list[bool], last_step: int) -> Optional[tuple]:
    """(global step, loss) of the first non-finite loss among steps that were applied (an
    overflow step was skipped, so its loss does not matter); `last_step` is the last one's."""
    first = last_step - len(losses) + 1
    for i, (loss, skipped) in enumerate(zip(losses, overflowed)):
        if not skipped and not math.isfinite(loss):
            return first + i, loss
    return None


def diverged(what: str, step: int, epoch: int, last_good: Optional[Path]) -> TrainingDiverged:
    where = (f"the last good checkpoint is {last_good}" if last_good
             else "no checkpoint was written before it")
    return TrainingDiverged(f"{what} at step {step} (epoch {epoch + 1}); {where}: lower optim.lr "
                            f"(or raise optim.warmup_epochs) and resume from it with --resume, "
                            f"or start again")


def finite_state(state: Callable[[], list], where: Callable[[], tuple]) -> Callable[[], list]:
    """`state` (what a checkpoint saves) that refuses non-finite weights, so no checkpoint of a
    diverged run is written. `where()` gives (step, epoch, last good checkpoint)."""
    def checked() -> list:
        params = state()
        for p in params:
            if not np.isfinite(p.asnumpy()).all():
                step, epoch, last_good = where()
                raise diverged(f"parameter {p.name} is not finite", step, epoch, last_good)
        return params
    return checked
