"""`predict`: top-k classes for image files from a checkpoint or an exported MINDIR."""
from __future__ import annotations

from launcher.cli import (add_config_flags, add_debug_flag, add_device_flags, add_weights_flag,
                          config_for_checkpoint, gpu_preflight, overrides_from,
                          resolve_checkpoint_arg)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="classify image files (checkpoint or exported .mindir/.onnx)",
        description="Print the top classes with probabilities for each image, preprocessed "
                    "exactly as evaluation does.")
    p.add_argument("--checkpoint", "--checkpoint_path", dest="checkpoint_path", required=True,
                   help="a .ckpt, a run directory (its newest checkpoint), an s3:// or obs:// URL "
                        "of either, or an exported .mindir or .onnx (onnxruntime) with its card "
                        "beside it")
    p.add_argument("--image", dest="images", nargs="+", required=True, metavar="IMAGE",
                   help="image files (JPEG, PNG, WebP, BMP, TIFF, GIF, PPM/PGM)")
    p.add_argument("--top", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--classes", help="class names (one per line, or a JSON list) to show instead "
                                     "of those stored with the model")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_weights_flag(p)
    add_config_flags(p, config_help="YAML recipe (checkpoints only; the saved config is the base)",
                     set_help="override a config key (checkpoints only)")
    add_device_flags(p)
    add_debug_flag(p)
    p.set_defaults(func=run, overrides=[])


def predictor_for(args):
    """A core.infer.predict.Predictor for --checkpoint (checkpoint or MINDIR)."""
    from pathlib import Path

    from core import checkpoint as ckpt
    from core.infer import predict
    from core.config import load_config
    from core.device import configure
    from core.nn.fuse import fuse_for_inference
    from core.infer.inference import network_from_checkpoint, resolve_weights
    from launcher.convert import read_class_names
    classes = read_class_names(args.classes) if args.classes else None
    suffix = Path(args.checkpoint_path).suffix.lower()
    if suffix in predict.GRAPH_SUFFIXES and "://" not in args.checkpoint_path:
        system = {k: v for k, v in overrides_from(args).items() if k.startswith("system.device")}
        system_cfg = load_config(None, system).system
        if suffix == ".onnx":
            return predict.from_onnx(args.checkpoint_path, classes)
        gpu_preflight(system_cfg.device_target)
        configure(system_cfg)
        return predict.from_mindir(args.checkpoint_path, classes)
    path = resolve_checkpoint_arg(args.checkpoint_path, args)
    try:
        checkpoint = ckpt.load(path)
    except ckpt.CheckpointError:
        if path.suffix.lower() in (".ckpt", "") or not path.is_file():
            raise
        raise ckpt.CheckpointError(f"{path} is not a checkpoint; predict accepts "
                                   f"{predict.ACCEPTED}") from None
    weights = resolve_weights(checkpoint, getattr(args, "weights", "auto"), path)
    cfg = config_for_checkpoint(args, checkpoint)
    gpu_preflight(cfg.system.device_target)
    configure(cfg.system)
    if classes and not checkpoint.meta.get("classes"):
        checkpoint.meta["classes"] = classes  # a converted ImageNet checkpoint, say
    net, names = network_from_checkpoint(checkpoint, cfg, path, weights=weights)
    if classes:
        names = classes
    return predict.from_network(fuse_for_inference(net, cfg.system.cpu_ops), names, cfg.data)


def run(args) -> int:
    from core.config import ConfigError
    from core.infer.predict import format_predictions, predictions_json
    if args.top < 1:
        raise ConfigError("--top must be at least 1")
    predictions = predictor_for(args).predict_files(args.images, args.top)
    print(predictions_json(predictions) if args.json else format_predictions(predictions))
    return 0
