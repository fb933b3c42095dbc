#!/usr/bin/env python
"""Workstation entry point: `python launcher/local.py train|eval|export [options] [key=value ...]`.

Reads the config, prepares local paths (the embedded demo dataset when none is given), and
calls core/. Model-zoo flags (--dataset_path, --device_target, --device_id,
--checkpoint_path, --pre_trained) are accepted as well.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

if not __package__:  # python launcher/local.py: the repository root onto sys.path
    import bootstrap  # noqa: F401


import launcher.openmp  # noqa: E402,F401  (before MindSpore is imported; see the module)

from core import checkpoint as ckpt  # noqa: E402
from core.config import ConfigError  # noqa: E402
from launcher.cli import (DEFAULT_CACHE, add_common, add_weights_flag,  # noqa: E402
                          config_for_checkpoint,
                          demo_dataset_path, gpu_preflight, overrides_from,
                          resolve_checkpoint_arg, resolve_local_resume)
from launcher.common import load_job_config, run_main, setup_logging  # noqa: E402
from launcher.signals import DEFAULT_GRACE_S  # noqa: E402

log = logging.getLogger("launcher.local")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="launcher/local.py", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train (and evaluate) a model")
    add_common(train)
    train.add_argument("--resume", help="checkpoint to continue from, or 'auto' for the newest in "
                                        "the run directory")
    train.add_argument("--checkpoint_path", help="model-zoo alias of --resume")
    train.add_argument("--pre_trained", help="weights to start from (fine-tuning)")
    train.add_argument("--nproc", type=int, default=1,
                       help="data-parallel processes on this machine (through msrun)")
    train.add_argument("--grace_s", type=float, default=DEFAULT_GRACE_S,
                       help="seconds from SIGTERM to exit: checkpoint, upload, publish "
                            "(default 30, or MNV3_STOP_GRACE_S)")
    for name, text in (("eval", "evaluate a checkpoint"), ("export", "export a checkpoint")):
        p = sub.add_parser(name, help=text)
        add_common(p)
        p.add_argument("--checkpoint_path", "--checkpoint", dest="checkpoint_path", required=True)
        add_weights_flag(p)
    sub.choices["export"].add_argument("--format", choices=("MINDIR", "ONNX", "AIR"))
    return top


def cmd_train(args) -> int:
    from cloud.job import prepare_job
    from launcher.runner import run_training
    cfg, settings = load_job_config(args.config, overrides_from(args))
    if not cfg.data.path:
        cfg.data.path = demo_dataset_path()
    resume = args.resume or args.checkpoint_path
    if args.nproc < 1:
        raise ConfigError(f"--nproc must be at least 1 (got {args.nproc})")
    if args.grace_s <= 0:
        raise ConfigError(f"--grace_s must be greater than 0 (got {args.grace_s:g})")
    setup_logging()  # staging progress and resume warnings come before the run's own log exists
    gpu_preflight(cfg.system.device_target)
    if args.nproc > 1:
        from launcher.distributed import launch_local
        return launch_local(args.nproc, cfg, settings, resume=resume, pretrained=args.pre_trained,
                            grace_s=args.grace_s)
    job = prepare_job(cfg, resume=resume, pretrained=args.pre_trained,
                      cache_dir=DEFAULT_CACHE, job_id=f"local-{os.getpid()}-{int(time.time())}",
                      settings=settings)
    from launcher.progress import EpochProgress
    from launcher.signals import StopOnSignal
    stop = StopOnSignal().install()  # SIGTERM (pre-emption): checkpoint at the next step, exit 0
    try:
        run_training(job.cfg, resume=resolve_local_resume(job.cfg, job.resume),
                     pretrained=job.pretrained, callbacks=[stop, *job.callbacks, EpochProgress()])
    finally:
        stop.uninstall()
    # waits for checkpoint uploads (after SIGTERM: what is left of the grace period), then
    # publishes the run directory
    job.finish(timeout_s=stop.time_left(args.grace_s))
    return 0


def _output_dir(args, checkpoint_path: Path) -> Path:
    if args.output_dir:
        return Path(args.output_dir)
    parent = checkpoint_path.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def cmd_eval(args) -> int:
    from core.device import configure
    from core.infer.evaluate import evaluate, format_result
    from core.data.sources import open_dataset
    from core.nn.fuse import fuse_for_inference
    from core.infer.inference import classes_of, network_from_checkpoint, resolve_weights
    path = resolve_checkpoint_arg(args.checkpoint_path, args)
    checkpoint = ckpt.load(path)
    weights = resolve_weights(checkpoint, args.weights, path)
    cfg = config_for_checkpoint(args, checkpoint)
    if not cfg.data.path:
        cfg.data.path = demo_dataset_path()
    setup_logging()
    try:  # before the evaluation: a run directory it cannot write is one line, at once
        _output_dir(args, path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from core.ownership import RunDirError
        raise RunDirError(_output_dir(args, path), exc) from None
    gpu_preflight(cfg.system.device_target)
    configure(cfg.system)
    classes = classes_of(checkpoint)
    dataset = open_dataset(cfg.data.path)
    if classes is None and dataset.has_split(cfg.data.train_dir):
        classes = dataset.split(cfg.data.train_dir).classes  # a foreign checkpoint: train names them
    val = dataset.split(cfg.data.val_dir, classes)
    net, names = network_from_checkpoint(checkpoint, cfg, path, classes or val.classes, weights)
    net = fuse_for_inference(net, cfg.system.cpu_ops)
    result = evaluate(net, val, cfg.data, cfg.train.label_smoothing)
    print(format_result(result, str(path)))
    print(f"weights: {weights}" + (" (--weights live for the trained ones)" if weights == "ema"
                                   else ""))
    out = _output_dir(args, path)
    out.mkdir(parents=True, exist_ok=True)
    record = dict(result, checkpoint=str(path), weights=weights, dataset=str(Path(cfg.data.path) / cfg.data.val_dir))
    (out / "eval.json").write_text(json.dumps(record, indent=2))
    print(f"eval written: {out / 'eval.json'}")
    return 0


def cmd_export(args) -> int:
    from core.device import configure
    from core.infer.export import export_model
    from core.infer.inference import has_ema, network_from_checkpoint, resolve_weights
    path = resolve_checkpoint_arg(args.checkpoint_path, args)
    checkpoint = ckpt.load(path)
    weights = resolve_weights(checkpoint, args.weights, path)
    cfg = config_for_checkpoint(args, checkpoint)
    setup_logging()
    gpu_preflight(cfg.system.device_target)
    target = configure(cfg.system)
    net, names = network_from_checkpoint(checkpoint, cfg, path, weights=weights)
    out = _output_dir(args, path) / "export"
    eval_file = out.parent / "eval.json"
    eval_result = json.loads(eval_file.read_text()) if eval_file.exists() else None
    if eval_result is not None and eval_result.get("weights", "live") != weights:
        eval_result = None  # measured with the other weights: not this graph's
    if eval_result is None and (weights == "ema") == has_ema(checkpoint):
        eval_result = checkpoint.meta.get("eval")  # the run's own evaluation used these weights
    exported = export_model(net, cfg, out, names, target, eval_result, weights)
    print(f"exported: {exported}")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "export": cmd_export}
# Further sub-commands live in their own modules, each with `add_parser(subparsers)` (which
# sets `func` on its parser) so this file stays a table of contents.
PLUGIN_COMMANDS: tuple[str, ...] = ("launcher.cmd_convert", "launcher.cmd_report",
                                     "launcher.cmd_predict", "launcher.cmd_pack")


def main(argv) -> int:
    import importlib
    top = parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    for name in PLUGIN_COMMANDS:
        importlib.import_module(name).add_parser(sub)
    args, extra = top.parse_known_args(argv)
    # KEY=VALUE overrides may stand anywhere, also after options
    unknown = [t for t in extra if t.startswith("-") or "=" not in t]
    if unknown:
        top.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = list(getattr(args, "overrides", None) or []) + extra
    if getattr(args, "func", None):
        return args.func(args) or 0
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(run_main(main))
