"""The global batch: what a run keeps when it continues on another number of processes.

Every global step consumes the next G positions of the epoch's sample order (G, the global batch,
is the per-device batch x processes; core.data.pipeline), so the step count, the learning-rate
schedule, the data position and every sample's augmentation and dropout draws are functions of
(seed, G) and the dataset, not of the process count. A checkpoint records G; a resume on M
processes keeps it with a per-device batch of G / M (data.global_batch_size=G says so, or
data.batch_size=G/M), and a resume at another G is refused with what would change.

What still depends on the process count: BatchNorm statistics are per device batch (no
synchronised BN), and the all-reduce sums gradients in another order, so weights agree across
process counts to rounding and BN batch statistics, not bit for bit (they do for the same count).
"""
from __future__ import annotations

import logging
from typing import Optional

from core.config import ConfigError

log = logging.getLogger("core.train.elastic")


def per_device_batch(data_cfg, world: int) -> int:
    """data.batch_size, or data.global_batch_size / world when that is set (one line when the
    process count does not divide it)."""
    total = data_cfg.global_batch_size
    if total is None:
        return int(data_cfg.batch_size)
    if total % world:
        raise ConfigError(f"data.global_batch_size {total} does not divide among {world} processes; "
                          f"run on a number of processes that divides it ({_divisors(total)}), or "
                          f"set data.global_batch_size to a multiple of {world} for a new run")
    return total // world


def _divisors(n: int, shown: int = 8) -> str:
    found = [d for d in range(1, min(n, 4096) + 1) if n % d == 0]
    return ", ".join(map(str, found[:shown])) + (", ..." if len(found) > shown else "")


def saved_global_batch(meta: dict) -> Optional[int]:
    """The global batch a checkpoint was written at: recorded since elastic resume, else its
    config's per-device batch x its process count; None when it says neither."""
    if meta.get("global_batch") is not None:
        return int(meta["global_batch"])
    batch = ((meta.get("config") or {}).get("data") or {}).get("batch_size")
    world = meta.get("world")
    return int(batch) * int(world) if batch is not None and world is not None else None


def inherited_global_batch(data_cfg, meta: dict, world: int) -> Optional[int]:
    """The checkpoint's global batch, for a resume on another process count that did not ask
    for another one: data.global_batch_size unset and data.batch_size what the checkpoint's run
    had per device (the same recipe and command line). None otherwise: a changed
    data.batch_size is a request check_resume then weighs."""
    saved, saved_world = saved_global_batch(meta), meta.get("world")
    saved_batch = ((meta.get("config") or {}).get("data") or {}).get("batch_size")
    if data_cfg.global_batch_size is not None or saved is None or saved_world in (None, world):
        return None
    if saved_batch is None or int(saved_batch) != int(data_cfg.batch_size):
        return None
    log.info("resuming a %d-process run on %d: keeping its global batch %d (data.global_batch_size); "
             "a different data.batch_size would ask for another one", saved_world, world, saved)
    return saved


def check_resume(meta: dict, path: str, batch: int, world: int, per_epoch: int) -> None:
    """Refuse (one line) a resume whose global batch or steps per epoch differ from the
    checkpoint's; log the change of process count when the global batch is kept."""
    total = batch * world
    saved = saved_global_batch(meta)
    saved_world = meta.get("world")
    saved_per_epoch = meta.get("steps_per_epoch")
    step = int(meta.get("step", 0))
    if saved is not None and saved != total:
        was = f" ({saved // saved_world} per device x {saved_world})" if saved_world else ""
        keep = (f"data.global_batch_size={saved} ({saved // world} per device on {world})"
                if saved % world == 0 else
                f"data.global_batch_size={saved} on a number of processes that divides it "
                f"({_divisors(saved)})")
        would = (f"steps per epoch would go from {saved_per_epoch} to {per_epoch}, and with them "
                 if saved_per_epoch is not None else "")
        raise ConfigError(f"checkpoint {path} was trained at global batch {saved}{was}, this run's is "
                          f"{total} ({batch} x {world}): {would}the LR schedule and the samples "
                          f"of every step after {step} would change; keep the global batch with "
                          f"{keep}, or start a new run from it with --pre_trained")
    if saved_per_epoch is not None and saved_per_epoch != per_epoch:
        raise ConfigError(f"checkpoint {path} was written with {saved_per_epoch} steps per epoch, "
                          f"this run has {per_epoch} at the same global batch {total} (the "
                          f"training set changed); resume with the data it was trained on, or "
                          f"start a new run from it with --pre_trained")
    if saved_world is not None and saved_world != world:
        log.info("resuming global step %d (global batch %d) of a %d-process run on %d process(es): "
                 "%d per device; the samples, augmentations and LR of every step are the same",
                 step, total, saved_world, world, batch)
