"""An epoch progress bar for the person watching a training run (rank 0 only).

Drawing is core.progress's (tqdm at a terminal, plain periodic lines in files).
"""
from __future__ import annotations

import time
from typing import Callable, Optional, TextIO

from core.train.callbacks import Callback
from core.progress import Progress, format_duration


class EpochProgress(Callback):
    """One bar per epoch from the trainer's callbacks.

    The trainer reports at each log interval (train.log_interval), so the bar moves at that
    cadence. Off a terminal it writes a line with overall progress and the time left every
    `interval_s`, which the trainer's own per-interval lines lack.
    """

    def __init__(self, stream: Optional[TextIO] = None, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self.interval_s = interval_s
        self.clock = clock
        self.bar: Optional[Progress] = None
        self.enabled = True
        self.per_epoch = 1
        self.total_steps = 0
        self.start_step = 0
        self.epochs = 1
        self.epoch = -1
        self.started = clock()
        self.epoch_started = self.started  # when the epoch in progress began

    def on_train_begin(self, info: dict) -> None:
        self.enabled = info.get("rank", 0) == 0
        self.per_epoch = max(1, int(info["steps_per_epoch"]))
        self.total_steps = int(info["total_steps"])
        self.start_step = int(info.get("start_step", 0))
        self.epochs = -(-self.total_steps // self.per_epoch)
        self.started = self.epoch_started = self.clock()

    def _bar_for(self, epoch: int) -> Progress:
        if self.bar is None or epoch != self.epoch:
            if self.bar is not None:
                self.bar.close()
            self.epoch = epoch
            in_epoch = min(self.per_epoch, self.total_steps - epoch * self.per_epoch)
            # the epoch began before its first report: time it from its start (a resumed run's
            # first epoch from the resume, counting the steps done before as done)
            done_before = max(0, self.start_step - epoch * self.per_epoch)
            self.bar = Progress(in_epoch, f"epoch {epoch + 1}/{self.epochs}", self.stream,
                                interval_s=self.interval_s, clock=self.clock,
                                started=self.epoch_started, initial=min(done_before, in_epoch))
        return self.bar

    def on_step_end(self, info: dict) -> None:
        if not self.enabled:
            return
        epoch, step = int(info["epoch"]), int(info["step"])
        bar = self._bar_for(epoch)
        extra = f"loss {info['loss']:.4f} lr {info['lr']:.5f} {info['images_per_sec']:.1f} img/s"
        if not bar.tty:
            extra += f" | run {step}/{self.total_steps} steps, {self._run_eta(step)} left"
        bar.update(step - epoch * self.per_epoch, extra)

    def _run_eta(self, step: int) -> str:
        done = step - self.start_step
        if done <= 0:
            return "?"
        elapsed = self.clock() - self.started
        return format_duration(elapsed / done * (self.total_steps - step))

    def on_epoch_end(self, info: dict) -> None:
        if self.enabled and self.bar is not None and int(info["epoch"]) == self.epoch:
            self.bar.update(int(info["step"]) - self.epoch * self.per_epoch)
            self.bar.close(f"avg loss {info['avg_loss']:.4f}, {info['epoch_time_ms'] / 1000:.1f} s")
            self.bar = None
        self.epoch_started = self.clock()  # the next epoch begins

    def on_train_end(self, summary: dict) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
