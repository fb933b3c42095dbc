"""Graceful stop on SIGTERM or SIGINT (Ctrl-C): a Callback that asks the trainer to checkpoint
and return. The log names the signal that arrived; a second SIGINT interrupts at once.

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
from typing import Callable, Iterable, Optional

import numpy as np

from core.train.callbacks import Callback

log = logging.getLogger("launcher.signals")

# Seconds from SIGTERM to exit: checkpoint at the next step boundary, upload it, publish the
# run. ModelArts and Kubernetes kill a job some time after SIGTERM (Kubernetes: 30 s by
# default); MNV3_STOP_GRACE_S or --grace_s changes it.
DEFAULT_GRACE_S = float(os.environ.get("MNV3_STOP_GRACE_S", "30"))


class StopOnSignal(Callback):
    """Turns SIGTERM, SIGINT (or the given `signals`) into `stop_requested() == True` on every rank.

    Use `install()` before training and `uninstall()` after; `request()` asks for a stop
    without a signal. `stop_requested` takes part in a collective every `sync_every` steps,
    so every rank must call it at every step (core.train.callbacks.CallbackList asks every callback).
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT), sync_every: int = 10,
                 all_reduce: Optional[Callable[[np.ndarray, int], np.ndarray]] = None):
        """`all_reduce(values, world)` sums over ranks (default core.distributed's)."""
        if sync_every < 1:
            raise ValueError("sync_every must be at least 1")
        self.signals = tuple(signals)
        self.sync_every = sync_every
        self.requested = False
        self.requested_at: Optional[float] = None  # time.monotonic() of the first request
        self.agreed = False
        self._previous: dict = {}
        self._calls = 0
        self.world = 1
        self.all_reduce = all_reduce

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

    def _sum(self, values: list) -> np.ndarray:
        if self.all_reduce is None:
            from core.distributed import all_reduce_sum  # MindSpore only once ranks must agree
            self.all_reduce = all_reduce_sum
        return self.all_reduce(np.asarray(values, np.float64), self.world)

    def _handle(self, signum, frame) -> None:  # runs in the main thread, between bytecodes
        if signum == signal.SIGINT and self.requested:  # Ctrl-C twice: stop now, no checkpoint
            raise KeyboardInterrupt
        self.request(f"on {signal.Signals(signum).name}")

    def on_train_begin(self, info: dict) -> None:
        self.world = int(info.get("world", 1))
        self._calls = 0

    def stop_requested(self) -> bool:
        if self.agreed:
            return True
        self._calls += 1
        if self.world <= 1:
            self.agreed = self.requested
        elif self._calls % self.sync_every == 0:
            self.agreed = bool(self._sum([float(self.requested)])[0] > 0)
            if self.agreed and not self.requested:
                log.warning("stop requested on another rank: checkpointing now")
        return self.agreed
