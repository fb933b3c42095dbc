"""Which checkpoints a run writes, and which it keeps.

Periodic checkpoints every N epochs and/or N steps, of which the newest K are kept; `best.ckpt`,
the best validation so far; and a final one (kind "stop" after a stop request) unless the last
step was just saved. Only the writing rank (rank 0) touches files; every rank keeps the same
bookkeeping so that all of them agree on what was saved when. Keep-K prunes by step but never
the checkpoint just written; a resume from an older step has already moved the later branch
aside (launcher.runner.claim_run_dir), so this is a guard, not the rule.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from core import checkpoint as ckpt
from core.train.callbacks import Callback
from core.train.metrics import MetricsWriter


class CheckpointSaver:
    """`state()` gives the parameters to save (weights, optimizer state, EMA weights);
    `base_meta` goes into every checkpoint (steps_per_epoch, config, classes, world)."""

    def __init__(self, folder: Path, checkpoint_cfg, state: Callable[[], list], base_meta: dict,
                 writer: bool, metrics: MetricsWriter, events: Callback,
                 last_saved_step: int = -1):
        self.checkpoints = ckpt.CheckpointManager(folder, checkpoint_cfg.prefix, checkpoint_cfg.keep)
        self.interval_epochs = checkpoint_cfg.interval_epochs
        self.interval_steps = checkpoint_cfg.interval_steps
        self.state = state
        self.base_meta = base_meta
        self.writer = writer
        self.metrics = metrics
        self.events = events
        self.last_saved_step = last_saved_step
        self.best: Optional[dict] = None

    def save(self, epoch: int, step: int, kind: str) -> Optional[Path]:
        """A periodic checkpoint, then the oldest beyond the newest K are removed."""
        self.last_saved_step = step
        if not self.writer:
            return None
        meta = dict(self.base_meta, epoch=epoch, step=step, kind=kind)
        manager = self.checkpoints
        path = ckpt.save(manager.folder / ckpt.checkpoint_name(manager.prefix, epoch, step),
                         self.state(), meta)
        for old in manager.files()[:-manager.keep]:
            if old != path:  # never the one just written, even if newer files sort after it
                old.unlink(missing_ok=True)
        self.metrics.write("checkpoint", path=path.name, epoch=epoch, step=step, kind=kind)
        self.events.on_checkpoint(path, meta)
        return path

    def after_step(self, epoch: int, step: int) -> None:
        if self.interval_steps and step % self.interval_steps == 0:
            self.save(epoch, step, "step")

    def after_epoch(self, epoch: int, step: int) -> None:
        """After a complete epoch `epoch` (0-based), unless this step was just saved."""
        if self.interval_epochs and (epoch + 1) % self.interval_epochs == 0 \
                and self.last_saved_step != step:
            self.save(epoch + 1, step, "epoch")

    def offer_best(self, result: Optional[dict], epoch: int, step: int, ties_win: bool = False) -> None:
        """Keep `result` (a validation) as the best if its top-1 is higher (or equal, with
        `ties_win`: the final evaluation wins a tie) and save best.ckpt."""
        if result is None:
            return
        if self.best is not None and (result["Top_1_Acc"] < self.best["Top_1_Acc"] or
                                      (result["Top_1_Acc"] == self.best["Top_1_Acc"] and not ties_win)):
            return
        self.best = result
        if self.writer:
            ckpt.save(self.checkpoints.folder / "best.ckpt", self.state(),
                      dict(self.base_meta, epoch=epoch, step=step, kind="best", eval=result))

    def final(self, epoch: int, step: int, stopped: bool) -> Path:
        """The run's last checkpoint: written now unless step `step` was just saved."""
        path = self.checkpoints.folder / ckpt.checkpoint_name(self.checkpoints.prefix, epoch, step)
        if self.last_saved_step != step:
            path = self.save(epoch, step, "stop" if stopped else "final") or path
        return path
