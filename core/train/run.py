"""A training run, built once: data splits, network, loss, schedule, optimizer, EMA and the
resume point. core.train.loop runs it; core.train.checkpoint_saver saves its state."""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from core import checkpoint as ckpt
from core.config import Config, ConfigError
from core.data.sources import Splits, load_splits
from core.device import amp_level, configure
from core.distributed import init_distributed
from core.nn.dropout import is_mask, replayable_dropouts
from core.nn.ema import EMA
from core.nn.cpu_ops import normalize_image
from core.train.elastic import check_resume, inherited_global_batch, per_device_batch
from core.train.finetune import is_active as finetune_active, param_groups
from core.infer.inference import depthwise_padding_for_run
from core.train.loss import LabelSmoothingCrossEntropy
from core.train.lr import warmup_cosine
from core.nn.model import build_model
from core.train.optim import build_optimizer
from core.data.normalization import pixel_normalization
from core.data.pipeline import steps_per_epoch

log = logging.getLogger("core.train.run")


class NetWithLoss(nn.Cell):
    """Loss of `net` on a batch. With `normalization` ((mean, std) on the 0-255 scale) the batch
    is the training pipeline's uint8 NHWC (core.data.pipeline.train_pipeline) and is transposed and
    normalised here, in fp32, before the network (on the custom CPU operator when `impl`, as
    system.cpu_ops, picks them); without it, float NCHW as the network takes."""

    def __init__(self, net, loss_fn, normalization=None, impl: str = "auto"):
        super().__init__(auto_prefix=False)
        self.net = net
        self.loss_fn = loss_fn
        self.normalize = normalization is not None
        if self.normalize:
            self.normalization = normalize_image(*normalization, impl=impl)

    def construct(self, image, label):
        if self.normalize:
            image = self.normalization(image)
        return self.loss_fn(ops.cast(self.net(image), ms.float32), label)


def optimizer_state(optimizer, net) -> list:
    """Optimizer parameters that are not network weights: step counter and moments.
    The learning-rate table is rebuilt from the config, so it is not saved."""
    weights = {p.name for p in net.get_parameters()}
    return [p for p in optimizer.get_parameters()
            if p.name not in weights and not p.name.startswith("learning_rate")]


@dataclass
class Run:
    """What the training loop needs. `cfg` is a copy of the caller's config holding what the
    run resolved (model.depthwise_padding from a resumed or pre-trained checkpoint)."""
    cfg: Config
    rank: int
    world: int
    target: str
    amp: str
    splits: Splits
    per_epoch: int
    total_steps: int
    net: nn.Cell
    optimizer: nn.Optimizer
    train_step: nn.Cell
    lr: np.ndarray
    ema: Optional[EMA]
    dropouts: list
    start_step: int = 0
    loss_scaled: bool = False        # the step skips gradient-overflow steps (MindSpore's cell)
    overflow_steps: int = 0          # steps skipped on overflow so far (this process)
    interval_overflows: int = 0      # ... since the last progress line
    at_step: int = 0                 # the global step reached (for error messages)
    at_epoch: int = 0
    compiled: bool = False           # the train step's graph (core.train.loop compiles it early)

    @property
    def global_batch(self) -> int:
        """Samples of one global step: the per-device batch x processes."""
        return self.cfg.data.batch_size * self.world

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes checkpoints, metrics and the summary."""
        return self.rank == 0

    def lr_at(self, step: int) -> float:
        """The learning rate of the step that ended at global step `step`."""
        return float(self.lr[min(step - 1, len(self.lr) - 1)])

    def checkpoint_state(self) -> list:
        """Weights and BN statistics, optimizer moments and step counter, EMA weights."""
        weights = [p for p in self.net.get_parameters() if not is_mask(p.name)]
        return weights + optimizer_state(self.optimizer, self.net) + (self.ema.state() if self.ema else [])

    def eval_network(self) -> nn.Cell:
        """The network to validate: the trained one, or with EMA a copy holding the averages."""
        if self.ema is None:
            return self.net
        copy_net = network(self.cfg, len(self.splits.classes))
        self.ema.copy_to(copy_net)
        return copy_net

    def begin_info(self, run_dir: Path) -> dict:
        """What Callback.on_train_begin receives."""
        return {"run_dir": str(run_dir), "rank": self.rank, "world": self.world,
                "steps_per_epoch": self.per_epoch, "global_batch": self.global_batch,
                "start_step": self.start_step,
                "total_steps": self.total_steps, "classes": list(self.splits.classes),
                "config": self.cfg}


def network(cfg: Config, num_classes: int) -> nn.Cell:
    return build_model(cfg.model.arch, num_classes, cfg.model.width_mult, cfg.model.dropout,
                       cfg.model.bn_momentum, cfg.model.depthwise_padding, cfg.system.cpu_ops)


def build_run(cfg: Config, resume: Optional[str] = None, pretrained: Optional[str] = None) -> Run:
    """Device, ranks, data, then the model and its optimisation, then the resume point. The
    caller's cfg is left as it is."""
    cfg = copy.deepcopy(cfg)
    target = configure(cfg.system)
    rank, world = init_distributed(cfg.system.distributed)
    ms.set_seed(cfg.train.seed)  # every rank: nothing broadcasts the initial weights
    splits = load_splits(cfg)  # the data's problems first, then the resume point's
    resumed = ckpt.load(resume) if resume else None
    if resumed is not None:  # the same run on another process count keeps its global batch
        cfg.data.global_batch_size = (inherited_global_batch(cfg.data, resumed.meta, world)
                                      or cfg.data.global_batch_size)
    cfg.data.batch_size = per_device_batch(cfg.data, world)  # the resolved config says what ran
    per_epoch = steps_per_epoch(len(splits.train), cfg.data.batch_size, world)
    if per_epoch == 0:
        raise ConfigError(f"global batch {cfg.data.batch_size * world} ({cfg.data.batch_size} x "
                          f"{world} rank(s)) exceeds the {len(splits.train)} training images; "
                          f"lower data.batch_size (or data.global_batch_size)")
    if resumed is not None:  # before the network is built: a refused resume costs nothing
        check_resume(resumed.meta, resume, cfg.data.batch_size, world, per_epoch)
    weights = ckpt.load(pretrained, ckpt.PRETRAINED_ADVICE) if pretrained else None
    cfg.model.depthwise_padding = depthwise_padding_for_run(
        cfg, resumed.meta if resumed else None, weights.meta if weights else None)
    net = network(cfg, len(splits.classes))
    if pretrained:
        ckpt.load_pretrained(net, pretrained, type(net).CLASSIFIER_PREFIXES, weights)
    amp = amp_level(cfg.train, target)
    loss_scale = cfg.train.loss_scale if amp != "O0" else 1.0
    if amp != "O0":
        ms.amp.auto_mixed_precision(net, amp)
    lr = warmup_cosine(cfg.optim.lr, cfg.optim.lr_end, cfg.optim.warmup_epochs, cfg.train.epochs,
                       per_epoch)
    optimizer = _optimizer(cfg, net, lr, per_epoch)
    loss_fn = LabelSmoothingCrossEntropy(len(splits.classes), cfg.train.label_smoothing)
    train_step = train_step_cell(
        NetWithLoss(net, loss_fn, pixel_normalization(cfg.data), cfg.system.cpu_ops),
        optimizer, loss_scale)
    train_step.set_train(True)
    total_steps = cfg.train.epochs * per_epoch
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    run = Run(cfg, rank, world, target, amp, splits, per_epoch, total_steps, net, optimizer,
              train_step, lr, EMA(net, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None,
              replayable_dropouts(net), loss_scaled=loss_scale != 1.0)
    if resumed is not None:
        run.start_step = _restore(run, resumed, resume)
    return run


def train_step_cell(net_with_loss: nn.Cell, optimizer, loss_scale: float) -> nn.Cell:
    """fp32: the plain step (a non-finite loss stops the run: core.train.divergence). With a loss
    scale (amp on Ascend/GPU): MindSpore's overflow handling, a fixed scale whose gradients
    are unscaled in the cell; a step whose gradients overflow is skipped (no optimizer update)
    and returns (loss, overflow, scale) so the loop counts it."""
    if loss_scale == 1.0:
        return nn.TrainOneStepCell(net_with_loss, optimizer)
    return nn.TrainOneStepWithLossScaleCell(net_with_loss, optimizer,
                                            nn.FixedLossScaleUpdateCell(loss_scale))


def _optimizer(cfg: Config, net: nn.Cell, lr: np.ndarray, per_epoch: int):
    """The gradients reach the optimizer unscaled (train_step_cell), so it gets no loss scale."""
    groups = None
    if finetune_active(cfg.finetune.backbone_lr_scale, cfg.finetune.freeze_backbone_epochs):
        groups = param_groups(net.trainable_params(), type(net).CLASSIFIER_PREFIXES, lr,
                              cfg.optim.weight_decay, cfg.finetune.backbone_lr_scale,
                              cfg.finetune.freeze_backbone_epochs * per_epoch)
    return build_optimizer(net.trainable_params(), cfg.optim, ms.Tensor(lr), 1.0, groups)


def _restore(run: Run, resumed: ckpt.Checkpoint, path: str) -> int:
    """Weights, optimizer moments, step counter (LR position); returns the step to resume at
    (the data position follows from it and the global batch, which check_resume compared)."""
    ckpt.restore([run.net, run.optimizer] + ([run.ema] if run.ema else []), resumed,
                 skip_prefixes=("learning_rate",))
    log.info("resumed from %s at global step %d", path, resumed.step)
    return resumed.step
