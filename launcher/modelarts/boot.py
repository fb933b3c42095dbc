#!/usr/bin/env python
"""ModelArts boot file: one command for one- and multi-node jobs on Ascend, GPU or CPU.

    python launcher/modelarts.py [--data_url=D] [--train_url=T] [--checkpoint_url=C]
        [--config=configs/ascend_8p.yaml] [--nproc=N] [--resume=auto] [--train_epochs=370 ...]
    python launcher/modelarts.py --print-job-spec|submit|status|logs|stop ...   (your machine)

Inputs and outputs: `--data_url`, `--train_url`, `--checkpoint_url` (or environment variables of
those names) are OBS URLs on legacy ModelArts (staged into the node's cache, outputs published
back) or local mounted folders on new ModelArts (used as they are). `--checkpoint_url` names a
checkpoint to resume from (a .ckpt, or a folder: its newest); without it, `--resume auto`
continues from the newest checkpoint in the output. Config keys come as ModelArts parameters,
whose names allow only letters, digits, '-' and '_': `--train_epochs=370` is `train.epochs`
(launcher/modelarts/args.py).

What this invocation starts (launcher/modelarts/plan.py): msrun with this node's ranks (Ascend,
GPU or CPU; MindSpore 2.10's documented start-up), one process per card from the rank table on
Ascend with --launch rank_table, or, when the platform already started it as one rank (preset
engines), exactly that rank. Every rank's output is printed as `[rank N] ...` and
kept in the run directory; the job fails if a rank fails. On SIGTERM the ranks checkpoint and
stop within the grace period, and the outputs are published either way. `--dry-run` prints
what would be started, and the rule that placed this node, and exits.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from launcher.bootstrap import REPO_ROOT  # noqa: E402  (the code folder a job uploads)


import launcher.openmp  # noqa: E402,F401  (before MindSpore is imported; see the module)

from launcher import distributed as dist  # noqa: E402
from launcher.common import setup_logging  # noqa: E402
from launcher.modelarts.args import (build_config, cache_root, parse_boot_args,  # noqa: E402
                                     parser, resume_point, split_hyperparameters)
from launcher.modelarts.plan import DYNAMIC_CLUSTER_VARS, PlanInputs, plan_for  # noqa: E402

log = logging.getLogger("launcher.modelarts.boot")


# --- starting it -----------------------------------------------------------------------------


def run_ranks(plan, log_dir: Path, grace_s: float, secrets: dict) -> int:
    """Single and rank-table plans: our own processes, supervised like msrun's."""
    log_dir.mkdir(parents=True, exist_ok=True)
    supervisor = dist.Supervisor(grace_s=grace_s)
    base = {k: v for k, v in os.environ.items() if k not in DYNAMIC_CLUSTER_VARS}
    for rank in plan.ranks:
        supervisor.start(rank["argv"], dist.child_environ({**secrets, **rank["env"]}, base=base),
                         f"rank {rank['rank']}", log_file=log_dir / f"worker_{rank['rank']}.log")
    code = supervisor.wait()
    supervisor.console.line("launcher", f"job {supervisor.outcome()}; rank logs: {log_dir}")
    return code


def become_rank(plan, secrets: dict) -> None:
    """A platform-started rank: this process becomes the rank (exec), so the platform's
    signals, exit code and process accounting apply to it directly. Rank 0 of a CPU/GPU job
    that no msrun started also runs MindSpore's scheduler, in this process group."""
    import subprocess
    if plan.scheduler:
        subprocess.Popen(plan.scheduler["argv"], env=dist.child_environ(
            {**secrets, **plan.scheduler["env"]}), stdin=subprocess.DEVNULL)
    rank = plan.ranks[0]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, rank["argv"], dist.child_environ({**secrets, **rank["env"]}))


# --- main ------------------------------------------------------------------------------------


def output_url(args):
    """Where the platform mirrors the output folder (train_url): the `output_url` parameter that
    `submit` adds, or train_url itself when it is a URL. A restarted job reads its checkpoints
    there when the local folder came back empty (cloud.job.resume_from_output_url)."""
    from launcher.modelarts.args import from_env
    return args.output_url or from_env("output_url")


__all__ = ["main", "parser", "split_hyperparameters"]
# Subcommands run on the user's machine (not inside a job): launcher/modelarts/jobs.py.
JOB_COMMANDS = ("submit", "status", "logs", "stop")


def main(argv) -> int:
    from cloud.cluster.environment import detect_environment
    from core.device import resolve_target

    argv = list(argv)
    if argv and argv[0] in JOB_COMMANDS:
        from launcher.modelarts.jobs import main as jobs_main
        return jobs_main(argv)
    argv, hyper = split_hyperparameters(list(argv))
    args, ignored = parse_boot_args(argv)
    setup_logging(stream=sys.stderr, console_datefmt=None)
    if ignored:  # what the platform appends (task indices, --init_method, ...): not ours
        log.info("ignoring %d argument(s) the boot file does not declare (added by the "
                 "platform): %s", len(ignored), " ".join(ignored))
    if args.print_job_spec:
        cfg, _, overrides = build_config(args, hyper, args.data_url, args.train_url)
        from launcher.modelarts.spec import job_spec
        spec, todo = job_spec(args, cfg, overrides)
        print(json.dumps(spec, indent=2))
        for item in todo:
            print(f"note: fill in {item}", file=sys.stderr)
        return 0
    env = detect_environment(overrides={"devices_per_node": args.nproc} if args.nproc else None)
    cfg, settings, _ = build_config(args, hyper, args.data_url or env.data_url,
                                    args.train_url or env.train_url)
    target = resolve_target(cfg.system.device_target)
    cache_dir = cache_root(args.cache_dir)
    log.info("%s; %s", env.describe(), target)
    if not args.dry_run:  # GPU: one line on what is missing, not MindSpore's stack trace
        from launcher.cli import gpu_preflight
        gpu_preflight(target)
    if not cfg.data.path:
        from launcher.cli import demo_dataset_path
        cfg.data.path = demo_dataset_path()
    resume = resume_point(args)

    if args.dry_run:  # nothing staged, nothing fetched
        launch = dist.Launch(cfg, dist.local_run_dir(cfg, cache_dir), resume, args.pre_trained, None)
    else:  # stage data and weights once on this node, map the output, resolve the resume point
        launch = dist.prepare_launch(cfg, resume, cache_dir=cache_dir, job_id=env.job_id,
                                     settings=settings, pretrained=args.pre_trained,
                                     output_url=output_url(args))
    run_dir = launch.run_dir
    # a dry run writes the files its plan names (node config, rank table) under the cache,
    # never into the output folder (train_url)
    launch_dir = cache_dir / "dry-run" / "launch" if args.dry_run else run_dir / "launch"
    config_path = dist.write_launch_config(launch.ranks_cfg, launch_dir.parent, env.node_rank, settings)
    plan = plan_for(env, target, PlanInputs(
        config_path, run_dir, cache_dir, launch.resume, launch.pretrained, args.grace_s,
        args.connect_timeout, args.rank_table_timeout, args.hccn_conf, args.nproc, args.launch,
        launch_dir))
    log.info("launch %s (%s)", plan.kind, plan.rule)
    if args.dry_run:
        print(json.dumps(plan.describe(), indent=2))
        return 0
    secrets = dist.secret_environ(settings)
    if plan.kind == "platform":
        become_rank(plan, secrets)  # does not return
    if plan.kind == "msrun":
        msrun = dict(plan.msrun, extra_env={**secrets, **plan.msrun["extra_env"]})
        for name in msrun.pop("unset_env", ()):  # msrun and its ranks inherit this environment
            os.environ.pop(name, None)
        code = dist.launch_msrun(config_path, grace_s=args.grace_s, **msrun)
    else:
        code = run_ranks(plan, run_dir / "rank_logs" / f"node{env.node_rank}", args.grace_s, secrets)
    return dist.publish(launch.job, code)

