"""One training process, as every entry point runs it: logging, config snapshot, core.train.loop.

The workstation launcher, the msrun worker and the ModelArts boot file all end here, so a
run directory looks the same wherever the job ran.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

from core.train.callbacks import Callback
from core.checkpoint import step_of_checkpoint
from core.checkpoint_store import run_checkpoints
from core.config import Config
from core.native import startup_warning
from core.ownership import RunLock
from core.train.loop import train
from launcher.common import setup_logging

log = logging.getLogger("launcher.runner")


def run_training(cfg: Config, resume: Optional[str] = None, pretrained: Optional[str] = None,
                 callbacks: Sequence[Callback] = (), rank: int = 0, world: int = 1,
                 job_id: Optional[str] = None) -> dict:
    """Train in cfg.system.output_dir (a local path). Rank 0 owns train.log and config.yaml;
    other ranks log to train.rank<N>.log, with a rank prefix on every line. Rank 0 first takes
    the directory's run lock (core.ownership): a second run into it is refused before it writes."""
    run_dir = Path(cfg.system.output_dir)
    created = _first_missing(run_dir)  # what this run creates, if anything (parents too)
    began = _Began(_LogFile(run_dir / ("train.log" if rank == 0 else f"train.rank{rank}.log"),
                            f"[rank {rank}] " if world > 1 else ""))
    lock = claim_run_dir(cfg, resume, job_id or f"pid-{os.getpid()}") if rank == 0 else None
    try:
        return _run(cfg, run_dir, resume, pretrained, [*callbacks, began], rank, world)
    finally:
        if lock:
            lock.release()
        if created is not None and not began.seen:  # refused before training began
            _remove_unstarted(run_dir, created)


class _Began(Callback):
    """Training began (data, model and resume point passed their checks): from here on the run
    directory is the run's, and its log file is written."""
    seen = False

    def __init__(self, log_file: "_LogFile"):
        self.log_file = log_file

    def on_train_begin(self, info: dict) -> None:
        self.seen = True
        self.log_file.begin()


class _LogFile(logging.Handler):
    """The run's train.log, written from the moment training begins with what was logged
    before it: a run refused at start (bad data, config or checkpoint) neither creates a log in
    a new directory nor appends to the log of the run it was asked to continue (its lines were
    on the console)."""

    def __init__(self, path: Path, rank_prefix: str):
        super().__init__()
        self.path = path
        # launcher.common.setup_logging's file format
        self.setFormatter(logging.Formatter(f"%(asctime)s {rank_prefix}%(levelname)s %(name)s: %(message)s"))
        self.held: list = []
        self.file: Optional[logging.FileHandler] = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is None:
            self.held.append(record)
        else:
            self.file.handle(record)

    def begin(self) -> None:
        if self.file is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = logging.FileHandler(self.path, encoding="utf-8")
        self.file.setFormatter(self.formatter)
        held, self.held = self.held, []
        for record in held:
            self.file.handle(record)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        super().close()


def _first_missing(path: Path) -> Optional[Path]:
    path = path.absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def _remove_unstarted(run_dir: Path, created: Path) -> None:
    """A run refused at start leaves nothing behind in the folders it created itself (the run
    lock made them), if nothing else was put there."""
    folder = run_dir.absolute()
    while True:
        try:
            folder.rmdir()
        except OSError:
            return  # something else is in it (another rank's log, a user's file): leave it
        if folder == created:
            return
        folder = folder.parent


def claim_run_dir(cfg: Config, resume: Optional[str], job_id: str) -> RunLock:
    """Rank 0's claim on its run directory before anything is written there: the run lock
    (refuses a second writer), then the branch rule: continuing from an explicit checkpoint at
    step S moves the directory's checkpoints after S aside (core.checkpoint_store's
    supersede), so keep-K and `--resume auto` only see the live branch."""
    lock = RunLock(cfg.system.output_dir, job_id).acquire()
    try:
        store = run_checkpoints(cfg.system.output_dir, cfg.checkpoint, owner=lock)
        if resume and Path(resume).is_file() and store.latest() is not None:
            store.supersede(step_of_checkpoint(resume))
    except BaseException:
        lock.release()
        raise
    return lock


def _run(cfg: Config, run_dir: Path, resume, pretrained, callbacks, rank: int, world: int) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(None, rank_prefix=f"[rank {rank}] " if world > 1 else "")
    began = next(c for c in callbacks if isinstance(c, _Began))
    logging.getLogger().addHandler(began.log_file)  # train.log once training begins
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
