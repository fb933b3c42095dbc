"""Fine-tuning options: a lower learning rate for the pre-trained backbone, and a backbone
frozen for the first N epochs.

Both are expressed as per-step learning-rate tables for two parameter sets (backbone and
classifier head), fed to the optimizer as parameter groups. Freezing is a backbone learning
rate of zero: the compiled train step, the optimizer state and the checkpoint layout stay the
same for the whole run, so a resume inside or after the frozen epochs is exact, and no graph
is recompiled when the backbone thaws. What freezing does not stop: gradients are still
computed, and BatchNorm running statistics keep adapting to the new data (as with
`requires_grad_(False)` in PyTorch).

The head is what `load_pretrained` replaces for a new class count: the parameters under the
network's CLASSIFIER_PREFIXES.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from core.train.optim import split_decay


def split_backbone(params: Iterable, classifier_prefixes: Sequence[str]) -> tuple[list, list]:
    """(backbone params, head params), each in the given order."""
    backbone, head = [], []
    for p in params:
        (head if p.name.startswith(tuple(classifier_prefixes)) else backbone).append(p)
    return backbone, head


def backbone_lr(lr: np.ndarray, scale: float, freeze_steps: int) -> np.ndarray:
    """The backbone's per-step learning rate: the head's times `scale`, zero while frozen."""
    if not 0.0 <= scale:
        raise ValueError(f"backbone learning-rate scale must be >= 0, got {scale}")
    out = np.asarray(lr, dtype=np.float32) * np.float32(scale)
    out[:max(0, int(freeze_steps))] = 0.0
    return out


def is_active(backbone_lr_scale: float, freeze_backbone_epochs: int) -> bool:
    """Whether the optimizer needs backbone/head groups at all (else the plain recipe)."""
    return backbone_lr_scale != 1.0 or freeze_backbone_epochs > 0


def param_groups(params: Iterable, classifier_prefixes: Sequence[str], lr: np.ndarray,
                 weight_decay: float, backbone_lr_scale: float = 1.0,
                 freeze_steps: int = 0) -> list[dict]:
    """Optimizer groups for MindSpore (nn.RMSProp / nn.Momentum): backbone and head, each split
    into decayed weights and undecayed BN/biases (as core.train.optim.split_decay), each with its own
    per-step LR table, then `order_params` so the optimizer keeps the network's order."""
    import mindspore as ms
    params = list(params)
    backbone, head = split_backbone(params, classifier_prefixes)
    if not head:
        raise ValueError(f"no parameter starts with {tuple(classifier_prefixes)}: cannot tell the "
                         f"head from the backbone")
    tables = ((backbone, backbone_lr(lr, backbone_lr_scale, freeze_steps)),
              (head, np.asarray(lr, dtype=np.float32)))
    groups = []
    for members, table in tables:
        decay, no_decay = split_decay(members)
        for group, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if group:
                groups.append({"params": group, "weight_decay": wd, "lr": ms.Tensor(table)})
    groups.append({"order_params": params})
    return groups


def trainable_at(params: Iterable, classifier_prefixes: Sequence[str], epoch: int,
                 freeze_backbone_epochs: int) -> list:
    """The parameters that learn in `epoch` (0-based): only the head while the backbone is
    frozen, all of them afterwards. For code that builds its train step per phase; the trainer
    instead keeps one step and zeroes the backbone LR (see param_groups)."""
    params = list(params)
    if epoch < freeze_backbone_epochs:
        return split_backbone(params, classifier_prefixes)[1]
    return params
