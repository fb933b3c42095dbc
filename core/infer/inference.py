"""Rebuild a network from a checkpoint for eval, export and predict.

Checkpoints written by this runner carry their config and class list; model-zoo checkpoints
carry neither, so the config (model.arch=modelzoo, num_classes) and the dataset supply them.
The saved config also says how the network pads (model.depthwise_padding: MindCV weights need
"same"), so every rebuild, fine-tuning and resume included, gets the network the weights fit.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

from core import checkpoint as ckpt
from core.config import Config, ConfigError
from core.nn.ema import PREFIX as EMA_PREFIX
from core.nn.model import build_model

log = logging.getLogger("core.infer.inference")


def classes_of(checkpoint: ckpt.Checkpoint) -> Optional[list[str]]:
    classes = checkpoint.meta.get("classes")
    return list(classes) if classes else None


WEIGHTS = ("auto", "ema", "live")


def has_ema(checkpoint: ckpt.Checkpoint) -> bool:
    return any(name.startswith(EMA_PREFIX) for name in checkpoint.params)


def resolve_weights(checkpoint: ckpt.Checkpoint, choice: str, path: str | Path) -> str:
    """'ema' or 'live': auto = the EMA weights when the checkpoint has them (what the run's own
    evaluation and best.ckpt chose by, as timm does), else the live ones."""
    if choice not in WEIGHTS:
        raise ConfigError(f"--weights must be one of {', '.join(WEIGHTS)}; got {choice!r}")
    if choice == "ema" and not has_ema(checkpoint):
        raise ConfigError(f"checkpoint {path} has no EMA weights (trained with train.ema_decay "
                          f"0); pass --weights live")
    if choice == "auto":
        return "ema" if has_ema(checkpoint) else "live"
    return choice


def with_weights(checkpoint: ckpt.Checkpoint, weights: str) -> ckpt.Checkpoint:
    """The checkpoint as the network loads it: with 'ema', each weight the EMA averages (BN
    statistics too) is replaced by its average."""
    if weights != "ema":
        return checkpoint
    params = dict(checkpoint.params)
    for name, value in checkpoint.params.items():
        if name.startswith(EMA_PREFIX):
            params[name[len(EMA_PREFIX):]] = value
    return ckpt.Checkpoint(params, checkpoint.meta)


def network_from_checkpoint(checkpoint: ckpt.Checkpoint, cfg: Config, path: str | Path,
                            classes: Optional[Sequence[str]] = None, weights: str = "live"):
    """(net in eval mode, class names). Class names: from the checkpoint, else `classes`,
    else generic names from model.num_classes. `weights`: 'live' or 'ema' (resolve_weights)."""
    names = classes_of(checkpoint) or (list(classes) if classes else None)
    if names is None:
        if cfg.model.num_classes is None:
            raise ConfigError(f"checkpoint {path} has no class list; give the dataset "
                              f"(--dataset_path) or set model.num_classes")
        names = [f"class_{i}" for i in range(cfg.model.num_classes)]
    if cfg.model.num_classes is not None and cfg.model.num_classes != len(names):
        raise ConfigError(f"model.num_classes is {cfg.model.num_classes} but checkpoint {path} "
                          f"has {len(names)} classes; set model.num_classes={len(names)} or null")
    net = build_model(cfg.model.arch, len(names), cfg.model.width_mult, cfg.model.dropout,
                      depthwise_padding=cfg.model.depthwise_padding,
                      ops_impl=cfg.system.cpu_ops)
    ckpt.restore([net], with_weights(checkpoint, weights))
    net.set_train(False)
    return net, names


def saved_depthwise_padding(meta: dict) -> Optional[str]:
    """The padding a checkpoint's network was built with; None for a foreign checkpoint (no
    config). Configs from before the option existed mean symmetric, the only padding then."""
    config = meta.get("config")
    if not isinstance(config, dict):
        return None
    return (config.get("model") or {}).get("depthwise_padding") or "symmetric"


def depthwise_padding_for_run(cfg: Config, resumed: Optional[dict] = None,
                              pretrained: Optional[dict] = None) -> str:
    """model.depthwise_padding for a training run, given the resumed and pre-trained
    checkpoints' metadata: the configured value, else the resumed run's, else the pre-trained
    weights' (so converted MindCV weights fine-tune in the network they came from), else
    symmetric. A resume must keep the padding its weights were trained with."""
    chosen = cfg.model.depthwise_padding
    saved = saved_depthwise_padding(resumed) if resumed is not None else None
    if chosen and saved and chosen != saved:
        raise ConfigError(f"model.depthwise_padding is {chosen} but the resumed checkpoint was "
                          f"trained with {saved}; drop the override or set it to {saved}")
    if chosen or saved:
        return chosen or saved
    inherited = None  # only the architecture the option applies to (MindCV weights fit no other)
    if pretrained is not None and cfg.model.arch == "mobilenet_v3_small":
        inherited = saved_depthwise_padding(pretrained)
    if inherited == "same":
        log.info("model.depthwise_padding=same, taken from the pre-trained checkpoint (MindCV "
                 "padding); set model.depthwise_padding=symmetric for torchvision's")
    return inherited or "symmetric"
