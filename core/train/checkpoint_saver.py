"""Which checkpoints a run writes, and which it keeps.

Periodic checkpoints every N epochs and/or N steps, of which the newest K are kept; `best.ckpt`,
the best validation so far; and a final one (kind "stop" after a stop request) unless the last
step was just saved. Only the writing rank (rank 0) touches files; every rank keeps the same
bookkeeping so that all of them agree on what was saved when. Which checkpoints are kept, and
the manifest beside them, is the run directory's checkpoint store's rule (core.checkpoint_store).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from core import checkpoint as ckpt
from core.checkpoint_store import CheckpointStore, Folder
from core.train.callbacks import Callback
from core.train.metrics import MetricsWriter


class CheckpointSaver:
    """`state()` gives the parameters to save (weights, optimizer state, EMA weights);
    `base_meta` goes into every checkpoint (steps_per_epoch, config, classes, world)."""

    def __init__(self, folder: Path, checkpoint_cfg, state: Callable[[], list], base_meta: dict,
                 writer: bool, metrics: MetricsWriter, events: Callback,
                 last_saved_step: int = -1):
        self.folder = Path(folder)
        self.prefix = checkpoint_cfg.prefix
        self.store = CheckpointStore(Folder(self.folder), keep=checkpoint_cfg.keep,
                                     name_prefix=checkpoint_cfg.prefix)
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
        """A periodic checkpoint, recorded in the store (which applies keep-K)."""
        self.last_saved_step = step
        if not self.writer:
            return None
        meta = dict(self.base_meta, epoch=epoch, step=step, kind=kind)
        path = ckpt.save(self.folder / ckpt.checkpoint_name(self.prefix, epoch, step), self.state(), meta)
        entry = self.store.add(path, {"epoch": epoch, "step": step, "kind": kind})
        self.metrics.write("checkpoint", path=path.name, epoch=epoch, step=step, kind=kind)
        self.events.on_checkpoint(path, dict(meta, size=entry["size"], sha256=entry["sha256"]))
        return path

    def latest(self) -> Optional[Path]:
        """The newest periodic checkpoint on disk."""
        entry = self.store.latest()
        return self.folder / entry["key"] if entry else None

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
            ckpt.save(self.folder / "best.ckpt", self.state(),
                      dict(self.base_meta, epoch=epoch, step=step, kind="best", eval=result))

    def final(self, epoch: int, step: int, stopped: bool) -> Path:
        """The run's last checkpoint: written now unless step `step` was just saved."""
        path = self.folder / ckpt.checkpoint_name(self.prefix, epoch, step)
        if self.last_saved_step != step:
            path = self.save(epoch, step, "stop" if stopped else "final") or path
        return path
