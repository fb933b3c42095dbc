#!/usr/bin/env python
"""ModelArts boot file: one command for one- and multi-node jobs on Ascend, GPU or CPU.

    python launcher/modelarts.py [--data_url=D] [--train_url=T] [--checkpoint_url=C]
        [--config=configs/ascend_8p.yaml] [--nproc=N] [--resume=auto] [KEY=VALUE ...]
    python launcher/modelarts.py --print-job-spec [--config ...] [--flavor F] [--node_count M] ...

Inputs and outputs: `--data_url`, `--train_url`, `--checkpoint_url` (or environment variables of
those names) are OBS URLs on legacy ModelArts (staged into the node's cache, outputs published
back) or local mounted folders on new ModelArts (used as they are). `--checkpoint_url` names a
checkpoint to resume from (a .ckpt, or a folder: its newest); without it, `--resume auto`
continues from the newest checkpoint in the output. Config keys also come as ModelArts
hyperparameters: `--train.epochs=3` or `--train_epochs=3`.

The node's place in the job comes from the environment (cloud.environment). Then:
* Ascend, several ranks: the rank table (ModelArts' jobstart_hccl.json converted to v1.0, or
  one generated from /etc/hccn.conf on a bare server) and one process per device with
  DEVICE_ID, RANK_ID, RANK_SIZE, RANK_TABLE_FILE (`--launch msrun` uses msrun instead);
* GPU/CPU, several ranks: msrun across the nodes, master = the first of VC_WORKER_HOSTS;
* one rank: one process.
Every rank's output is printed as `[rank N] ...` and kept in the run directory; the job fails
if a rank fails. On SIGTERM the ranks checkpoint and stop within the grace period, and the
outputs are published either way. `--dry-run` prints what would be started and exits.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import launcher.openmp  # noqa: E402,F401  (before MindSpore is imported; see the module)

from core.config import ConfigError, known_keys, parse_override  # noqa: E402
from launcher.common import run_main  # noqa: E402
from launcher import distributed as dist  # noqa: E402
from launcher.modelarts_plan import DEFAULT_CONNECT_TIMEOUT_S, PlanInputs, plan_for  # noqa: E402

log = logging.getLogger("launcher.modelarts")
# Arguments some ModelArts engines add on their own; they mean nothing here.
IGNORED_HYPERPARAMETERS = ("init_method", "num_gpus")
# Variables of msrun's dynamic cluster: a rank-table process must not inherit them.
DYNAMIC_CLUSTER_VARS = ("MS_ROLE", "MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM", "MS_NODE_ID",
                        "MS_TOPO_TIMEOUT")


# --- arguments -------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launcher/modelarts.py", description=__doc__.splitlines()[0])
    p.add_argument("--data_url", help="dataset: OBS URL or local folder (ImageFolder root)")
    p.add_argument("--train_url", help="outputs: OBS URL or local folder")
    p.add_argument("--checkpoint_url", help="checkpoint to resume from (.ckpt, or a folder)")
    p.add_argument("--pre_trained", help="weights to fine-tune from (local path or URL)")
    p.add_argument("--config", help="YAML recipe (relative paths: cwd, then the code dir)")
    p.add_argument("--nproc", type=int, help="ranks on this node (default: accelerators per node)")
    p.add_argument("--resume", default="auto", help="'auto' (default), 'none', or a checkpoint")
    p.add_argument("--device_target", choices=("auto", "CPU", "GPU", "Ascend"))
    p.add_argument("--launch", choices=("auto", "rank_table", "msrun"), default="auto",
                   help="Ascend: per-device processes with a rank table (auto) or msrun")
    p.add_argument("--hccn_conf", default="/etc/hccn.conf", help="device IPs of a bare server")
    p.add_argument("--connect_timeout", type=int, default=DEFAULT_CONNECT_TIMEOUT_S,
                   help="seconds ranks wait for each other at start-up (HCCL_CONNECT_TIMEOUT, "
                        "msrun's cluster timeout): nodes stage data at different speeds")
    p.add_argument("--rank_table_timeout", type=float, default=600.0,
                   help="seconds to wait for ModelArts' rank table to be completed")
    p.add_argument("--cache_dir", help="node-local cache (default $MNV3_CACHE_DIR, /cache/mnv3 "
                                       "when /cache exists, else ~/.cache/mnv3_runner)")
    p.add_argument("--grace_s", type=float, default=dist.DEFAULT_GRACE_S,
                   help="seconds the ranks get to checkpoint after SIGTERM")
    p.add_argument("--dry-run", dest="dry_run", action="store_true",
                   help="print the processes this node would start, start nothing")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    spec = p.add_argument_group("--print-job-spec and submit: a ModelArts training-job definition "
                                "(API v2)")
    spec.add_argument("--print-job-spec", dest="print_job_spec", action="store_true",
                      help="print the job definition (the body `submit` sends) as JSON and exit")
    spec.add_argument("--job_name", default="mobilenetv3-small")
    spec.add_argument("--code_dir", help="OBS folder holding this project (preset engines)")
    spec.add_argument("--image", help="SWR image built from the Dockerfile (custom-image jobs)")
    spec.add_argument("--engine", help="preset engine as NAME:VERSION (instead of --image)")
    spec.add_argument("--flavor", help="resource flavour id (see GET /v2/{project_id}/training-"
                                       "job-flavors)")
    spec.add_argument("--node_count", type=int, default=1)
    spec.add_argument("--pool_id", help="dedicated resource pool to run in (default: the public pool)")
    spec.add_argument("--log_url", help="OBS folder the job's logs are exported to")
    spec.add_argument("--env", action="append", metavar="NAME=VALUE",
                      help="environment variable for the job (repeatable)")
    spec.add_argument("--max_retries", type=int, default=3,
                      help="restarts on a detected fault (0: none); the restarted job resumes "
                           "from train_url's checkpoints")
    spec.add_argument("--no_prefetch_output", dest="prefetch_output", action="store_false",
                      help="do not ask ModelArts to download train_url into the job before it "
                           "starts (then a restarted job cannot resume from a mounted output)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    return p


def split_hyperparameters(argv: list[str]) -> tuple[list[str], dict]:
    """Take ModelArts hyperparameters out of argv: `--train.epochs=3`, `--train_epochs=3` or
    `--train_epochs 3` become config overrides (`--storage.endpoint=...` too); the rest is left
    for argparse."""
    keys = set(known_keys()) | {f"storage.{name}" for name in storage_fields()}
    by_underscore = {key.replace(".", "_", 1): key for key in keys}
    rest, found, i = [], {}, 0
    while i < len(argv):
        token = argv[i]
        name, has_value, value = token[2:].partition("=")
        option = token.startswith("--")
        key = (name if name in keys else by_underscore.get(name)) if option else None
        if key is None and not (option and name in IGNORED_HYPERPARAMETERS):
            rest.append(token)
            i += 1
            continue
        if not has_value:
            if i + 1 >= len(argv):
                raise ConfigError(f"hyperparameter {token} has no value")
            value, i = argv[i + 1], i + 1
        i += 1
        if key:
            found[key] = parse_override(f"{key}={value}")[1]
    return rest, found


def storage_fields() -> list[str]:
    import dataclasses

    from cloud.settings import StorageSettings
    return [f.name for f in dataclasses.fields(StorageSettings)]


def resolve_config_path(text: Optional[str]) -> Optional[str]:
    """ModelArts starts the boot file from its own directory: try the code dir too."""
    if not text or Path(text).is_absolute() or Path(text).exists():
        return text
    candidate = REPO_ROOT / text
    return str(candidate) if candidate.exists() else text


def from_env(name: str) -> Optional[str]:
    return os.environ.get(name) or os.environ.get(name.upper()) or None


def cache_root(arg: Optional[str]) -> Path:
    if arg:
        return Path(arg)
    if os.environ.get("MNV3_CACHE_DIR"):
        return Path(os.environ["MNV3_CACHE_DIR"])
    if os.path.isdir("/cache") and os.access("/cache", os.W_OK):
        return Path("/cache/mnv3")  # ModelArts' local SSD
    return Path.home() / ".cache" / "mnv3_runner"


def build_config(args, hyper: dict, data_url: Optional[str], train_url: Optional[str]):
    """(Config, storage settings, the overrides given): recipe <- KEY=VALUE and hyperparameters
    <- inputs/outputs."""
    from launcher.common import load_job_config
    overrides = dict(parse_override(text) for text in args.overrides)
    overrides.update(hyper)
    if data_url:
        overrides["data.path"] = data_url
    if train_url:
        overrides["system.output_dir"] = train_url
    if args.device_target:
        overrides["system.device_target"] = args.device_target
    cfg, settings = load_job_config(resolve_config_path(args.config), overrides)
    return cfg, settings, overrides


def resume_point(args) -> Optional[str]:
    """--checkpoint_url wins over --resume; a local folder means its newest checkpoint."""
    from cloud.job import is_remote
    from launcher.local import resolve_checkpoint_arg
    url = args.checkpoint_url or from_env("checkpoint_url")
    if url:
        if is_remote(url):
            if not url.endswith(".ckpt"):
                raise ConfigError(f"--checkpoint_url {url}: name the .ckpt object, not a folder")
            return url
        return str(resolve_checkpoint_arg(url))
    return None if args.resume in ("none", "") else args.resume


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


# Subcommands run on the user's machine (not inside a job): launcher/modelarts_jobs.py.
JOB_COMMANDS = ("submit", "status", "logs", "stop")


def main(argv) -> int:
    from cloud.environment import detect_environment
    from core.device import resolve_target

    argv = list(argv)
    if argv and argv[0] in JOB_COMMANDS:
        from launcher.modelarts_jobs import main as jobs_main
        return jobs_main(argv)
    argv, hyper = split_hyperparameters(list(argv))
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.print_job_spec:
        cfg, _, overrides = build_config(args, hyper, args.data_url, args.train_url)
        from launcher.modelarts_spec import job_spec
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
        from launcher.local import demo_dataset_path
        cfg.data.path = demo_dataset_path()
    resume = resume_point(args)

    if args.dry_run:  # nothing staged, nothing fetched
        launch = dist.Launch(cfg, dist.local_run_dir(cfg, cache_dir), resume, args.pre_trained, None)
    else:  # stage data and weights once on this node, map the output, resolve the resume point
        launch = dist.prepare_launch(cfg, resume, cache_dir=cache_dir, job_id=env.job_id,
                                     settings=settings, pretrained=args.pre_trained)
    run_dir = launch.run_dir
    config_path = dist.write_launch_config(launch.ranks_cfg, run_dir, env.node_rank, settings)
    plan = plan_for(env, target, PlanInputs(
        config_path, run_dir, cache_dir, launch.resume, launch.pretrained, args.grace_s,
        args.connect_timeout, args.rank_table_timeout, args.hccn_conf, args.nproc, args.launch))
    log.info("launch %s (%s)", plan.kind, plan.rule)
    if args.dry_run:
        print(json.dumps(plan.describe(), indent=2))
        return 0
    secrets = dist.secret_environ(settings)
    if plan.kind == "platform":
        become_rank(plan, secrets)  # does not return
    if plan.kind == "msrun":
        msrun = dict(plan.msrun, extra_env={**secrets, **plan.msrun["extra_env"]})
        code = dist.launch_msrun(config_path, grace_s=args.grace_s, **msrun)
    else:
        code = run_ranks(plan, run_dir / "rank_logs" / f"node{env.node_rank}", args.grace_s, secrets)
    return dist.publish(launch.job, code)


if __name__ == "__main__":
    sys.exit(run_main(main))
