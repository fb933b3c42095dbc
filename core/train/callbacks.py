"""Hooks through which launchers and cloud adapters follow a run without the trainer knowing them.

The trainer calls these at fixed points; e.g. the cloud layer uploads each checkpoint in
`on_checkpoint`, and a SIGTERM handler asks the trainer to stop via `stop_requested`.
"""
from __future__ import annotations

from pathlib import Path


class Callback:
    def on_train_begin(self, info: dict) -> None:
        """info: run_dir, rank, world, steps_per_epoch, start_step, total_steps, classes, and
        config (the run's Config as resolved, e.g. model.depthwise_padding)."""

    def on_step_end(self, info: dict) -> None:
        """Called at each log interval with step, epoch, loss, lr, images_per_sec."""

    def on_epoch_end(self, info: dict) -> None:
        """epoch, step, avg_loss, epoch_time_ms, per_step_ms."""

    def on_checkpoint(self, path: Path, meta: dict) -> None:
        """A checkpoint was written completely (rank 0 only)."""

    def on_eval(self, result: dict) -> None:
        """An evaluation finished (every rank gets the global result)."""

    def on_train_end(self, summary: dict) -> None:
        """Training finished or stopped; summary says which."""

    def stop_requested(self) -> bool:
        """True asks the trainer to checkpoint at the next step boundary and return."""
        return False


class CallbackList(Callback):
    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks)

    def on_train_begin(self, info):
        for c in self.callbacks:
            c.on_train_begin(info)

    def on_step_end(self, info):
        for c in self.callbacks:
            c.on_step_end(info)

    def on_epoch_end(self, info):
        for c in self.callbacks:
            c.on_epoch_end(info)

    def on_checkpoint(self, path, meta):
        for c in self.callbacks:
            c.on_checkpoint(path, meta)

    def on_eval(self, result):
        for c in self.callbacks:
            c.on_eval(result)

    def on_train_end(self, summary):
        for c in self.callbacks:
            c.on_train_end(summary)

    def stop_requested(self):
        # every callback is asked, also after one said yes: some take part in a collective on
        # every call, and every rank must make the same calls whatever the list order
        answers = [c.stop_requested() for c in self.callbacks]
        return any(answers)
