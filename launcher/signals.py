"""Graceful stop on SIGTERM: a Callback that asks the trainer to checkpoint and return.

Cloud schedulers (ModelArts, Kubernetes, Slurm) send SIGTERM and kill the job a grace period
later. The handler only sets a flag; the trainer polls `stop_requested()` after every step and,
once it is true, writes a "stop" checkpoint and returns (summary status "stopped").

In a data-parallel run every rank must stop after the same step: a rank that stops while the
others enter the next step's gradient all-reduce would leave them waiting until the collective
times out. The signal reaches the ranks at slightly different moments, so the ranks agree on
the flag with an all-reduce (MindSpore's own collective, a few bytes; SUM, the only reduction
MindSpore's CPU backend offers) every `sync_every` steps (default 10: reading the result waits
for the device, which would stall Ascend/GPU pipelines if done every step).
"""
from __future__ import annotations

import logging
import os
import signal
import time
from typing import Iterable, Optional, Sequence

import numpy as np

from core.callbacks import Callback

log = logging.getLogger("launcher.signals")

# Seconds from SIGTERM to exit: checkpoint at the next step boundary, upload it, publish the
# run. ModelArts and Kubernetes kill a job some time after SIGTERM (Kubernetes: 30 s by
# default); MNV3_STOP_GRACE_S or --grace_s changes it.
DEFAULT_GRACE_S = float(os.environ.get("MNV3_STOP_GRACE_S", "30"))


class RankAgreement:
    """Element-wise sum of a small vector over all ranks; the identity with one rank."""

    def __init__(self, world: int):
        self.world = world
        self._cell = None

    def sum(self, values: Sequence[float]) -> np.ndarray:
        vector = np.asarray(values, np.float32)
        if self.world <= 1:
            return vector
        import mindspore as ms
        if self._cell is None:  # one Cell, compiled once, reused every step
            self._cell = _all_reduce_sum_cell()
        return self._cell(ms.Tensor(vector)).asnumpy()


def _all_reduce_sum_cell():
    from mindspore import nn, ops

    class AllReduceSum(nn.Cell):
        def __init__(self):
            super().__init__()
            self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM)

        def construct(self, x):
            return self.all_reduce(x)

    return AllReduceSum()


class StopOnSignal(Callback):
    """Turns SIGTERM (and the other `signals`) into `stop_requested() == True` on every rank.

    Use `install()` before training and `uninstall()` after; `request()` asks for a stop
    without a signal. Put it first in the callback list: `stop_requested` takes part in a
    collective every `sync_every` steps, so every rank must call it at every step.
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM,), sync_every: int = 10):
        if sync_every < 1:
            raise ValueError("sync_every must be at least 1")
        self.signals = tuple(signals)
        self.sync_every = sync_every
        self.requested = False
        self.requested_at: Optional[float] = None  # time.monotonic() of the first request
        self.agreed = False
        self._previous: dict = {}
        self._calls = 0
        self._agreement = RankAgreement(1)

    def install(self) -> "StopOnSignal":
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def request(self, reason: str = "requested") -> None:
        if not self.requested:
            log.warning("stop %s: checkpointing at the next step boundary", reason)
            self.requested_at = time.monotonic()
        self.requested = True

    def time_left(self, grace_s: float, margin_s: float = 2.0) -> Optional[float]:
        """Seconds left of the grace period (less a margin to exit in), None without a stop
        request: what the final upload may still take."""
        if self.requested_at is None:
            return None
        return max(0.0, grace_s - margin_s - (time.monotonic() - self.requested_at))

    def _handle(self, signum, frame) -> None:  # runs in the main thread, between bytecodes
        self.request(f"on {signal.Signals(signum).name}")

    def on_train_begin(self, info: dict) -> None:
        self._agreement = RankAgreement(int(info.get("world", 1)))
        self._calls = 0

    def stop_requested(self) -> bool:
        if self.agreed:
            return True
        self._calls += 1
        if self._agreement.world <= 1:
            self.agreed = self.requested
        elif self._calls % self.sync_every == 0:
            self.agreed = bool(self._agreement.sum([float(self.requested)])[0] > 0)
            if self.agreed and not self.requested:
                log.warning("stop requested on another rank: checkpointing now")
        return self.agreed
