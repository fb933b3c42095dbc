"""One training process, as every entry point runs it: logging, config snapshot, core.train.

The workstation launcher, the msrun worker and the ModelArts boot file all end here, so a
run directory looks the same wherever the job ran.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

from core.callbacks import Callback
from core.config import Config
from core.native import startup_warning
from core.train import train
from launcher.common import setup_logging

log = logging.getLogger("launcher.runner")


def run_training(cfg: Config, resume: Optional[str] = None, pretrained: Optional[str] = None,
                 callbacks: Sequence[Callback] = (), rank: int = 0, world: int = 1) -> dict:
    """Train in cfg.system.output_dir (a local path). Rank 0 owns train.log and config.yaml;
    other ranks log to train.rank<N>.log, with a rank prefix on every line."""
    run_dir = Path(cfg.system.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_name = "train.log" if rank == 0 else f"train.rank{rank}.log"
    setup_logging(run_dir / log_name, rank_prefix=f"[rank {rank}] " if world > 1 else "")
    native = startup_warning() if rank == 0 else None
    if native:  # e.g. an image whose base had no compiler: said at start-up, not silent
        log.warning("%s", native)
    if rank == 0:  # once the data, model and resume point passed their checks: a run that
        # fails on bad input leaves the config.yaml of the run it was asked to continue alone
        callbacks = [*callbacks, _SaveConfig(run_dir / "config.yaml")]
    summary = train(cfg, run_dir, resume=resume, pretrained=pretrained, callbacks=tuple(callbacks))
    if rank == 0:
        best = summary.get("best_eval")
        print(f"run directory: {run_dir.resolve()}")
        print(f"final checkpoint: {summary['final_checkpoint']}")
        if best:
            print(f"best val top-1 {best['Top_1_Acc']:.4f} top-5 {best['Top_5_Acc']:.4f} "
                  f"({best['images']} images)")
    return summary


class _SaveConfig(Callback):
    """Writes the run's config as training starts, as train() resolved it (values the run
    inherits, e.g. model.depthwise_padding from the pre-trained or resumed checkpoint)."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_begin(self, info: dict) -> None:
        self.path.write_text(info["config"].to_yaml())
