"""Rebuild a network from a checkpoint for eval, export and predict.

Checkpoints written by this runner carry their config and class list; model-zoo checkpoints
carry neither, so the config (model.arch=modelzoo, num_classes) and the dataset supply them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from core import checkpoint as ckpt
from core.config import Config, ConfigError
from core.model import build_model


def classes_of(checkpoint: ckpt.Checkpoint) -> Optional[list[str]]:
    classes = checkpoint.meta.get("classes")
    return list(classes) if classes else None


def network_from_checkpoint(checkpoint: ckpt.Checkpoint, cfg: Config, path: str | Path,
                            classes: Optional[Sequence[str]] = None):
    """(net in eval mode, class names). Class names: from the checkpoint, else `classes`,
    else generic names from model.num_classes."""
    names = classes_of(checkpoint) or (list(classes) if classes else None)
    if names is None:
        if cfg.model.num_classes is None:
            raise ConfigError(f"checkpoint {path} has no class list; give the dataset "
                              f"(--dataset_path) or set model.num_classes")
        names = [f"class_{i}" for i in range(cfg.model.num_classes)]
    if cfg.model.num_classes is not None and cfg.model.num_classes != len(names):
        raise ConfigError(f"model.num_classes is {cfg.model.num_classes} but checkpoint {path} "
                          f"has {len(names)} classes; set model.num_classes={len(names)} or null")
    net = build_model(cfg.model.arch, len(names), cfg.model.width_mult, cfg.model.dropout)
    ckpt.restore([net], checkpoint)
    net.set_train(False)
    return net, names
