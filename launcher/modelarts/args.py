"""The ModelArts boot file's command line: its flags, the hyperparameters ModelArts appends
(`--train_epochs=370`: parameter names allow only letters, digits, '-' and '_', so a config key's
section dot travels as '_'), and the config, cache and resume point they resolve to.

Shared by the boot file (launcher/modelarts.py) and the job commands (launcher/modelarts/jobs.py,
whose `submit` builds the same job definition as `--print-job-spec`).
"""
from __future__ import annotations

import argparse
import difflib
import os
from pathlib import Path
from typing import Optional

from core.config import ConfigError, known_keys, parse_override
from launcher.bootstrap import REPO_ROOT
from launcher.cli import DEFAULT_CACHE, add_debug_flag, resolve_checkpoint_arg
from launcher.modelarts.plan import DEFAULT_CONNECT_TIMEOUT_S
from launcher.modelarts.spec import MAX_RETRIES
from launcher.signals import DEFAULT_GRACE_S

DESCRIPTION = "ModelArts boot file: one command for one- and multi-node jobs on Ascend, GPU or CPU."
# Arguments some ModelArts engines add on their own; they mean nothing here.
IGNORED_HYPERPARAMETERS = ("init_method", "num_gpus")
# An undeclared argument whose name is at least this similar (difflib ratio) to one of ours is a
# misspelling of ours (an error naming the nearest); anything else is the platform's, ignored.
MISSPELT_CUTOFF = 0.85


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launcher/modelarts.py", description=DESCRIPTION)
    p.add_argument("--data_url", help="dataset: OBS URL or local folder (ImageFolder root)")
    p.add_argument("--train_url", help="outputs: OBS URL or local folder")
    p.add_argument("--checkpoint_url", help="checkpoint to resume from (.ckpt, or a folder)")
    p.add_argument("--output_url", help="the OBS URL the platform mirrors a local train_url to "
                                        "(submit adds it): a restarted job whose local output "
                                        "is empty resumes from the checkpoints there")
    p.add_argument("--pre_trained", help="weights to fine-tune from (local path or URL)")
    p.add_argument("--config", help="YAML recipe (relative paths: cwd, then the code dir)")
    p.add_argument("--nproc", type=int, help="ranks on this node (default: accelerators per node)")
    p.add_argument("--resume", default="auto", help="'auto' (default), 'none', or a checkpoint")
    p.add_argument("--device_target", choices=("auto", "CPU", "GPU", "Ascend"))
    p.add_argument("--launch", choices=("auto", "rank_table", "msrun"), default="auto",
                   help="how several ranks start: msrun (auto, every target; MindSpore 2.10's "
                        "documented way) or, on Ascend only, rank_table (one process per device "
                        "from the rank table; deprecated by MindSpore since 2.4)")
    p.add_argument("--hccn_conf", default="/etc/hccn.conf", help="device IPs of a bare server")
    p.add_argument("--connect_timeout", type=int, default=DEFAULT_CONNECT_TIMEOUT_S,
                   help="seconds ranks wait for each other at start-up (HCCL_CONNECT_TIMEOUT, "
                        "msrun's cluster timeout): nodes stage data at different speeds")
    p.add_argument("--rank_table_timeout", type=float, default=600.0,
                   help="seconds to wait for ModelArts' rank table to be completed")
    p.add_argument("--cache_dir", help="node-local cache (default $MNV3_CACHE_DIR, /cache/mnv3 "
                                       "when /cache exists, else ~/.cache/mnv3_runner)")
    p.add_argument("--grace_s", type=float, default=DEFAULT_GRACE_S,
                   help="seconds the ranks get to checkpoint after SIGTERM")
    p.add_argument("--dry-run", dest="dry_run", action="store_true",
                   help="print the processes this node would start, start nothing")
    add_debug_flag(p)
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
                      help=f"restarts on a detected fault, {MAX_RETRIES[0]}-{MAX_RETRIES[1]} "
                           f"(fault-tolerance/job-retry-num; 0: none); the restarted job resumes "
                           f"from train_url's checkpoints")
    spec.add_argument("--unconditional_retry", action="store_true",
                      help="also restart when the training code itself fails (exit code not 0): "
                           "fault-tolerance/job-unconditional-retry")
    spec.add_argument("--hang_retry", action="store_true",
                      help="also restart in place when ModelArts detects a hang: "
                           "fault-tolerance/hang-retry")
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


def parse_boot_args(argv: list[str]):
    """The boot file's arguments, tolerant of what the platform appends.

    ModelArts appends arguments no script declared (`--init_method=tcp://...`, task indices,
    others; its troubleshooting page "ModelArts Training Job Failed to Parse Parameters" tells
    scripts to use parse_known_args). Returns (args, ignored): `ignored` names every undeclared
    `--name` whose name is not close to one of ours. One that is close (`--train_epoch=5` for
    `--train_epochs`) is a misspelling: ConfigError naming the nearest (exit 2)."""
    p = parser()
    options = [o for o in p._option_string_actions if o.startswith("--")]
    args, unknown = p.parse_known_args(_glue_values(argv, options))
    ignored = []
    for token in unknown:
        name = token.partition("=")[0]
        if not name.startswith("--") or name == "--":
            raise ConfigError(f"unexpected argument {token!r}: config overrides are KEY=VALUE "
                              f"(e.g. train.epochs=3) or --section_key=VALUE")
        nearest = nearest_name(name[2:])
        if nearest:
            raise ConfigError(f"unknown parameter {name}: did you mean {nearest}? (an argument "
                              f"this close to one of ours is taken for a misspelling, not for "
                              f"one the platform added)")
        ignored.append(name)
    return args, ignored


def _glue_values(argv: list[str], options: list[str]) -> list[str]:
    """`--undeclared VALUE` -> `--undeclared=VALUE`, so the value is not taken for a KEY=VALUE
    override."""
    out, i = [], 0
    while i < len(argv):
        token = argv[i]
        name = token.partition("=")[0]
        if (token.startswith("--") and "=" not in token and name not in options
                and i + 1 < len(argv) and not argv[i + 1].startswith("-")
                and "=" not in argv[i + 1]):
            out.append(f"{token}={argv[i + 1]}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def nearest_name(name: str) -> Optional[str]:
    """The parameter of ours `name` is a misspelling of (`--train_epochs`, or a flag), or None."""
    keys = set(known_keys()) | {f"storage.{field}" for field in storage_fields()}
    ours = {key.replace(".", "_", 1): f"--{key.replace('.', '_', 1)} (config key {key})"
            for key in keys}
    ours.update({key: f"--{key.replace('.', '_', 1)} (config key {key})" for key in keys})
    ours.update({o[2:]: o for o in parser()._option_string_actions if o.startswith("--")})
    close = difflib.get_close_matches(name, list(ours), n=1, cutoff=MISSPELT_CUTOFF)
    return ours[close[0]] if close else None


def storage_fields() -> list[str]:
    import dataclasses

    from cloud.storage.settings import StorageSettings
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
    """--cache_dir, else $MNV3_CACHE_DIR, else ModelArts' local SSD /cache when writable, else
    the workstation default."""
    if arg:
        return Path(arg)
    if not os.environ.get("MNV3_CACHE_DIR") and os.path.isdir("/cache") \
            and os.access("/cache", os.W_OK):
        return Path("/cache/mnv3")
    return DEFAULT_CACHE


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
    from cloud.storage.urls import is_remote_url
    url = args.checkpoint_url or from_env("checkpoint_url")
    if url:
        if is_remote_url(url):
            if not url.endswith(".ckpt"):
                raise ConfigError(f"--checkpoint_url {url}: name the .ckpt object, not a folder")
            return url
        return str(resolve_checkpoint_arg(url))
    return None if args.resume in ("none", "") else args.resume
