"""Command-line pieces the entry points share: flags, overrides, the cache folder, and how a
checkpoint or a resume point given on the command line is found."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional

# The node-local cache for staged data, run directories of URL outputs, the demo dataset.
DEFAULT_CACHE = Path(os.environ.get("MNV3_CACHE_DIR", Path.home() / ".cache" / "mnv3_runner"))
DEVICE_TARGETS = ("auto", "CPU", "GPU", "Ascend")

# flag -> config key, for the flags that set one
FLAG_KEYS = (("dataset_path", "data.path"), ("device_target", "system.device_target"),
             ("device_id", "system.device_id"), ("output_dir", "system.output_dir"),
             ("format", "export.format"))


def add_debug_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")


def add_config_flags(p: argparse.ArgumentParser, config_help: str = "YAML recipe (configs/*.yaml)",
                     set_help: str = "override a config key (also accepted as bare KEY=VALUE "
                                     "arguments)", set_metavar: str = "KEY=VALUE") -> None:
    p.add_argument("--config", help=config_help)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar=set_metavar,
                   help=set_help)


def add_device_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device_target", choices=DEVICE_TARGETS)
    p.add_argument("--device_id", type=int)


def add_common(p: argparse.ArgumentParser) -> None:
    """The flags of train, eval, export and the distributed launcher (model-zoo names kept)."""
    add_config_flags(p)
    p.add_argument("--dataset_path", "--data", dest="dataset_path",
                   help="ImageFolder root with train/ and val/ (default: embedded demo dataset)")
    add_device_flags(p)
    p.add_argument("--output_dir", help="run directory (system.output_dir)")
    add_debug_flag(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")


def add_weights_flag(p: argparse.ArgumentParser) -> None:
    """eval, export, predict: which weights of a checkpoint to use."""
    p.add_argument("--weights", choices=("auto", "ema", "live"), default="auto",
                   help="auto (default): the EMA weights when the checkpoint has them (what the "
                        "run evaluated and chose best.ckpt by), else the live ones")


def overrides_from(args) -> dict:
    """Config overrides from --set, bare KEY=VALUE arguments and the flags that name a key."""
    from core.config import parse_override
    pairs = dict(parse_override(text) for text in list(args.sets) + list(getattr(args, "overrides", ())))
    for flag, key in FLAG_KEYS:
        value = getattr(args, flag, None)
        if value is not None:
            pairs[key] = value
    return pairs


def demo_dataset_path() -> str:
    from core.data.synthetic import ensure_demo_dataset
    return str(ensure_demo_dataset(DEFAULT_CACHE / "demo_dataset_v1"))


def resolve_local_resume(cfg, resume: Optional[str]) -> Optional[str]:
    """'auto' -> newest checkpoint in the run directory (or None); refuse to train over a
    directory that already holds a run unless asked to resume it. Reads only: the run that
    owns the directory applies the branch rule (launcher.runner.claim_run_dir)."""
    from core.checkpoint_store import run_checkpoints
    from core.config import ConfigError
    run_dir = Path(cfg.system.output_dir)
    store = run_checkpoints(run_dir, cfg.checkpoint)
    latest = store.latest()
    if resume == "auto":
        return store.fetch(latest) if latest else None
    if not resume and latest is not None:
        raise ConfigError(f"run directory {run_dir} already holds checkpoints; pass --resume auto "
                          f"to continue that run or choose another --output_dir")
    return resume


def resolve_checkpoint_arg(text: str, args=None) -> Path:
    """A .ckpt file, or a run directory / checkpoints folder meaning its newest checkpoint;
    an s3:// or obs:// URL of either is fetched into the cache and verified first (as
    --resume and --pre_trained are: cloud.storage.checkpoint_store, storage.* keys of `args`)."""
    from core.checkpoint import CheckpointError
    from core.checkpoint_store import CheckpointStore, Folder
    if "://" in str(text):
        return Path(fetch_remote_checkpoint(str(text), args))
    path = Path(text)
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        store = CheckpointStore(Folder(folder))
        latest = store.latest()
        if latest is None:
            raise CheckpointError(f"no checkpoint in {folder} (pass a .ckpt file or a run "
                                  f"directory that holds checkpoints/)")
        return Path(store.fetch(latest))
    return path


def fetch_remote_checkpoint(url: str, args=None) -> str:
    """The local copy of a checkpoint URL: an object (`.../best.ckpt`, checked against the
    manifest beside it when there is one) or a run's output URL / its checkpoints/ prefix (the
    manifest's newest good checkpoint, size and sha256 checked). Storage settings come from
    the recipe's `storage:` section and storage.* overrides."""
    from cloud.storage.checkpoint_store import MANIFEST_NAME, fetch_checkpoint, newest_checkpoint
    from cloud.storage.errors import StorageError
    from cloud.job import cache_path
    from cloud.storage.store import open_storage
    from cloud.storage.urls import parse_url
    from launcher.common import load_job_config
    parsed = parse_url(url)  # a malformed URL or an unknown scheme: one line naming the form
    settings = None
    if args is not None:
        _, settings = load_job_config(getattr(args, "config", None),
                                      {k: v for k, v in overrides_from(args).items()
                                       if k.startswith("storage.")})
    cache = str(cache_path(DEFAULT_CACHE, "checkpoints", url))
    if parsed.prefix.rstrip("/").endswith(".ckpt"):
        return fetch_checkpoint(url, cache, settings)
    prefix = parsed.prefix.rstrip("/")
    if not prefix.endswith("checkpoints"):
        prefix = f"{prefix}/checkpoints" if prefix else "checkpoints"
    storage = open_storage(f"{parsed.scheme}://{parsed.bucket}/{prefix}", settings)
    found = newest_checkpoint(storage, "", cache)
    if found is None:
        raise StorageError(f"no checkpoint under {url}: {storage.describe(MANIFEST_NAME)} does not "
                           f"exist (pass the URL of a .ckpt object or of a run's output folder)")
    return found


def config_for_checkpoint(args, checkpoint):
    """Saved training config <- user recipe <- command line, so eval, export and predict see
    the network and input size the checkpoint was trained with."""
    from core.config import load_config
    return load_config(args.config, overrides_from(args), base=checkpoint.meta.get("config"))


def gpu_preflight(device_target: str) -> None:
    """device_target=GPU: check that MindSpore 2.10's GPU plugin can load here before anything
    starts (raises cloud.cluster.gpu_check.GpuRuntimeError, one line naming what is missing)."""
    if device_target != "GPU":
        return
    import logging

    from cloud.cluster.gpu_check import check_gpu_runtime
    log = logging.getLogger("launcher")
    runtime = check_gpu_runtime()
    log.info("%s", runtime.summary())
    for warning in runtime.warnings:
        log.warning("%s", warning)
