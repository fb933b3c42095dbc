#!/usr/bin/env python
"""One rank of a data-parallel job, as msrun (or the Ascend per-device launcher) starts it.

    python launcher/worker.py --config RUN/launch/node0.yaml [--resume CKPT] [--pretrained CKPT]
        [--job_id ID] [--cache_dir DIR] [--nnodes M --node_rank R --nproc_per_node N]

The launchers write the resolved config to a file and pass its path: secrets never travel on
command lines. This process works out its rank from the environment (cloud.cluster.environment),
binds its accelerator, maps remote data/outputs to local paths (cloud.job), and trains through
launcher.runner like every other entry point. Rank 0 publishes the outputs at the end.

msrun also starts this script as its scheduler (MS_ROLE=MS_SCHED): then it only runs
MindSpore's cluster scheduler inside `init()`. When several msrun "nodes" share one host, each
would start a scheduler on the same port; only node 0's runs, the others exit at once.

SIGTERM makes the rank checkpoint at a step boundary that all ranks agree on (they compare
notes every 10 steps, launcher/signals.py) and exit 0.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional

if not __package__:  # python launcher/worker.py: the repository root onto sys.path
    import bootstrap  # noqa: F401


import launcher.openmp  # noqa: E402,F401  (before MindSpore is imported; see the module)

from core.train.callbacks import Callback  # noqa: E402
from core.config import ConfigError  # noqa: E402
from launcher.cli import DEFAULT_CACHE, add_debug_flag  # noqa: E402
from launcher.common import load_job_config, run_main, setup_logging  # noqa: E402
from launcher.signals import DEFAULT_GRACE_S, StopOnSignal  # noqa: E402

log = logging.getLogger("launcher.worker")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launcher/worker.py", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="resolved config written by the launcher")
    p.add_argument("--resume", help="local checkpoint, URL, or 'auto'")
    p.add_argument("--pretrained", help="weights to start from (local path or URL)")
    p.add_argument("--job_id", help="same on every rank of the job (names the staging lock)")
    p.add_argument("--cache_dir", default=str(DEFAULT_CACHE), help="node-local staging cache")
    p.add_argument("--nnodes", type=int, help="number of nodes")
    p.add_argument("--node_rank", type=int, help="this node's index")
    p.add_argument("--nproc_per_node", type=int, help="processes per node")
    p.add_argument("--grace_s", type=float, default=DEFAULT_GRACE_S,
                   help="seconds from SIGTERM until the launcher kills this rank")
    add_debug_flag(p)
    return p


def is_scheduler() -> bool:
    return os.environ.get("MS_ROLE") == "MS_SCHED"


def run_scheduler(node_rank: Optional[int]) -> int:
    """msrun's scheduler role: MindSpore runs the cluster scheduler inside init() and ends the
    process when the workers are done."""
    if node_rank:
        print(f"node {node_rank}: msrun scheduler not needed (node 0 runs it)", flush=True)
        return 0
    import mindspore as ms
    from mindspore.communication import init
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")  # the scheduler needs no accelerator
    init()
    return 0


def locate(args):
    """This process's place in the job; the launcher's topology overrides what the environment
    cannot tell (msrun does not export its --local_worker_num)."""
    from cloud.cluster.environment import detect_environment
    overrides = {"node_count": args.nnodes, "node_rank": args.node_rank,
                 "devices_per_node": args.nproc_per_node}
    return detect_environment(overrides={k: v for k, v in overrides.items() if v is not None})


def bind_device(cfg, env) -> str:
    """GPU/Ascend: this rank's accelerator is DEVICE_ID (msrun: the local index; rank table:
    the physical id), else the local rank."""
    from core.device import resolve_target
    target = resolve_target(cfg.system.device_target)
    if target in ("GPU", "Ascend"):
        cfg.system.device_id = env.device_id if env.device_id is not None else env.local_rank
    return target


def local_checkpoint(cfg, resume: Optional[str]) -> Optional[str]:
    """'auto' with a local run directory: its newest checkpoint (or None)."""
    if resume != "auto":
        return resume
    from launcher.cli import resolve_local_resume
    return resolve_local_resume(cfg, "auto")


def storage_settings(settings):
    """The recipe's storage settings, with the credentials the launcher passed through the
    environment (launcher.distributed.secret_environ)."""
    from launcher.distributed import SECRET_SETTINGS
    secrets = {name: os.environ[var] for name, var in SECRET_SETTINGS.items() if os.environ.get(var)}
    return settings.replace(**secrets) if secrets else settings


class ResumeAgreement(Callback):
    """Fails fast when ranks resume from different steps (e.g. `--resume auto` on nodes whose
    run directories are not shared): they would otherwise deadlock or train apart."""

    def on_train_begin(self, info: dict) -> None:
        world = int(info.get("world", 1))
        if world <= 1:
            return
        import numpy as np

        from core.distributed import all_reduce_sum
        start = int(info["start_step"])
        total = int(round(all_reduce_sum(np.array([float(start)]), world)[0]))
        if total != start * world:  # all equal <=> every rank sees world x its own step
            raise ConfigError(
                f"rank {info['rank']} resumes at step {start} but the ranks' steps add up to "
                f"{total}, not {start * world}: give every node the same checkpoint (a shared or "
                f"s3:// / obs:// output directory, or an explicit --resume)")


class ShardLog(Callback):
    """One INFO line per rank naming the part of the data it reads, for the logs of a
    distributed run."""

    def on_train_begin(self, info: dict) -> None:
        rank, world, per_epoch = info["rank"], info["world"], info["steps_per_epoch"]
        total = info["global_batch"]
        batch = total // world
        log.info("rank %d/%d reads shard %d of %d of each global batch of the epoch's sample order "
                 "(positions %d..%d of every %d): %d images in %d steps", rank, world, rank, world,
                 rank * batch, (rank + 1) * batch - 1, total, per_epoch * batch, per_epoch)


def train_rank(args) -> int:
    from cloud.job import prepare_job
    from launcher.runner import run_training

    env = locate(args)
    cfg, settings = load_job_config(args.config, {})
    cfg.system.distributed = env.world_size > 1
    target = bind_device(cfg, env)
    log.info("%s on %s", env.describe(), target)
    stop = StopOnSignal().install()
    try:
        job_id = args.job_id or env.job_id
        cache_dir = Path(args.cache_dir)
        job = prepare_job(cfg, resume=args.resume, cache_dir=cache_dir, job_id=job_id,
                          writer=env.is_primary, settings=storage_settings(settings),
                          pretrained=args.pretrained)
        resume = local_checkpoint(job.cfg, job.resume)
        from launcher.watchdog import HangWatchdog
        callbacks = [stop, HangWatchdog(cfg.train.hang_timeout_s, env.rank), ResumeAgreement(),
                     ShardLog(), *job.callbacks]
        summary = run_training(job.cfg, resume=resume, pretrained=job.pretrained,
                               callbacks=callbacks, rank=env.rank, world=env.world_size,
                               job_id=job_id)
        if env.is_primary:  # after SIGTERM, uploads may take what is left of the grace period
            job.finish(timeout_s=stop.time_left(args.grace_s))
    finally:
        stop.uninstall()
    log.info("rank %d finished: %s at step %d", env.rank, summary["status"], summary["step"])
    return 0


def main(argv) -> int:
    args = parser().parse_args(argv)
    setup_logging()
    if is_scheduler():
        return run_scheduler(args.node_rank)
    return train_rank(args)


if __name__ == "__main__":
    sys.exit(run_main(main))
