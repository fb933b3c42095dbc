"""The training loop, readable top to bottom: data, model, loss, schedule, optimizer, loop.

Knows local paths and a Config only. Launchers prepare the environment (staging, ranks,
devices) and follow the run through callbacks.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from core import checkpoint as ckpt
from core.callbacks import Callback, CallbackList
from core.config import Config, ConfigError
from core.data import (CorruptImages, DatasetError, build_train_dataset, guarded,
                       pixel_normalization, steps_per_epoch)
from core.device import amp_level, configure, sink_mode
from core.distributed import init_distributed
from core.dropout import is_mask, replayable_dropouts
from core.ema import EMA
from core.evaluate import evaluate, format_result
from core.finetune import is_active as finetune_active, param_groups
from core.inference import depthwise_padding_for_run
from core.loss import LabelSmoothingCrossEntropy
from core.lr import warmup_cosine
from core.metrics import MetricsWriter
from core.model import build_model
from core.optim import build_optimizer
from core.packed import has_split, split_for

log = logging.getLogger("core.train")


@dataclass
class Splits:
    train: object
    val: Optional[object]
    classes: tuple


def load_splits(cfg: Config, need_val: bool = True) -> Splits:
    """Scan train/ (and val/) and check num_classes against the folders."""
    if not cfg.data.path:
        raise DatasetError("no dataset given: set data.path (or --dataset_path) to an ImageFolder root")
    root = Path(cfg.data.path)
    train = split_for(root, cfg.data.train_dir)  # an ImageFolder split or a packed one
    val = None
    if need_val and has_split(root, cfg.data.val_dir):
        val = split_for(root, cfg.data.val_dir, train.classes)
    check_num_classes(cfg, len(train.classes), str(root / cfg.data.train_dir))
    return Splits(train, val, train.classes)


def check_num_classes(cfg: Config, found: int, where: str) -> int:
    if cfg.model.num_classes is not None and cfg.model.num_classes != found:
        raise ConfigError(f"model.num_classes is {cfg.model.num_classes} but {where} has {found} "
                          f"class folders; set model.num_classes={found} or null")
    return found


class NetWithLoss(nn.Cell):
    """Loss of `net` on a batch. With `normalization` ((mean, std) on the 0-255 scale) the batch
    is the training pipeline's uint8 NHWC (core.data.build_train_dataset) and is transposed and
    normalised here, in fp32, before the network; without it, float NCHW as the network takes."""

    def __init__(self, net, loss_fn, normalization=None):
        super().__init__(auto_prefix=False)
        self.net = net
        self.loss_fn = loss_fn
        self.normalize = normalization is not None
        if self.normalize:
            mean, std = (np.asarray(v, np.float32).reshape(1, 3, 1, 1) for v in normalization)
            self.mean, self.std = ms.Tensor(mean), ms.Tensor(std)

    def construct(self, image, label):
        if self.normalize:
            image = (ops.cast(ops.transpose(image, (0, 3, 1, 2)), ms.float32) - self.mean) / self.std
        return self.loss_fn(ops.cast(self.net(image), ms.float32), label)


def optimizer_state(optimizer, net) -> list:
    """Optimizer parameters that are not network weights: step counter and moments.
    The learning-rate table is rebuilt from the config, so it is not saved."""
    weights = {p.name for p in net.get_parameters()}
    return [p for p in optimizer.get_parameters()
            if p.name not in weights and not p.name.startswith("learning_rate")]


def train(cfg: Config, run_dir: str | Path, resume: Optional[str] = None,
          pretrained: Optional[str] = None, callbacks: tuple[Callback, ...] = ()) -> dict:
    """Train per cfg; returns a summary dict. Rank 0 writes checkpoints and metrics."""
    run_dir = Path(run_dir)
    events = CallbackList(callbacks)
    target = configure(cfg.system)
    rank, world = init_distributed(cfg.system.distributed)
    writer_rank = rank == 0
    ms.set_seed(cfg.train.seed)  # every rank: nothing broadcasts the initial weights

    # Data
    splits = load_splits(cfg)
    per_epoch = steps_per_epoch(len(splits.train), cfg.data.batch_size, world)
    if per_epoch == 0:
        raise ConfigError(f"data.batch_size {cfg.data.batch_size} x {world} rank(s) exceeds the "
                          f"{len(splits.train)} training images; lower data.batch_size")

    # Model, loss, schedule, optimizer
    resumed = ckpt.load(resume) if resume else None
    weights = ckpt.load(pretrained) if pretrained else None
    cfg.model.depthwise_padding = depthwise_padding_for_run(
        cfg, resumed.meta if resumed else None, weights.meta if weights else None)
    net = build_model(cfg.model.arch, len(splits.classes), cfg.model.width_mult, cfg.model.dropout,
                      cfg.model.bn_momentum, cfg.model.depthwise_padding)
    if pretrained:
        ckpt.load_pretrained(net, pretrained, type(net).CLASSIFIER_PREFIXES, weights)
    amp = amp_level(cfg.train, target)
    loss_scale = cfg.train.loss_scale if amp != "O0" else 1.0
    if amp != "O0":
        ms.amp.auto_mixed_precision(net, amp)
    loss_fn = LabelSmoothingCrossEntropy(len(splits.classes), cfg.train.label_smoothing)
    lr = warmup_cosine(cfg.optim.lr, cfg.optim.lr_end, cfg.optim.warmup_epochs, cfg.train.epochs,
                       per_epoch)
    groups = None
    if finetune_active(cfg.finetune.backbone_lr_scale, cfg.finetune.freeze_backbone_epochs):
        groups = param_groups(net.trainable_params(), type(net).CLASSIFIER_PREFIXES, lr,
                              cfg.optim.weight_decay, cfg.finetune.backbone_lr_scale,
                              cfg.finetune.freeze_backbone_epochs * per_epoch)
    optimizer = build_optimizer(net.trainable_params(), cfg.optim, ms.Tensor(lr), loss_scale, groups)
    train_step = nn.TrainOneStepCell(NetWithLoss(net, loss_fn, pixel_normalization(cfg.data)),
                                     optimizer, sens=loss_scale)
    train_step.set_train(True)
    ema = EMA(net, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    dropouts = replayable_dropouts(net)

    def state():
        weights = [p for p in net.get_parameters() if not is_mask(p.name)]
        params = weights + optimizer_state(optimizer, net)
        return params + (ema.state() if ema else [])

    # Resume: weights, optimizer moments, step counter (LR position), then the data position
    start_step = 0
    if resumed is not None:
        ckpt.restore([net, optimizer] + ([ema] if ema else []), resumed,
                     skip_prefixes=("learning_rate",))
        start_step = resumed.step
        saved_per_epoch = resumed.meta.get("steps_per_epoch")
        if saved_per_epoch is not None and saved_per_epoch != per_epoch:
            raise ConfigError(f"checkpoint {resume} was written with {saved_per_epoch} steps per "
                              f"epoch, this run has {per_epoch} (ranks x data.batch_size or the "
                              f"dataset changed); resume with the same world size and batch size, "
                              f"or start a new run from it with --pre_trained")
        log.info("resumed from %s at global step %d", resume, start_step)

    total_steps = cfg.train.epochs * per_epoch
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    writer = MetricsWriter(run_dir / "metrics.jsonl" if writer_rank else None)
    manager = ckpt.CheckpointManager(run_dir / "checkpoints", cfg.checkpoint.prefix, cfg.checkpoint.keep)
    base_meta = {"steps_per_epoch": per_epoch, "config": cfg.to_dict(),
                 "classes": list(splits.classes), "world": world}
    global_batch = cfg.data.batch_size * world
    events.on_train_begin({"run_dir": str(run_dir), "rank": rank, "world": world,
                           "steps_per_epoch": per_epoch, "start_step": start_step,
                           "total_steps": total_steps, "classes": list(splits.classes)})
    log.info("rank %d/%d on %s, amp %s, %d train / %d val images, %d classes, %d steps/epoch, "
             "steps %d..%d", rank, world, target, amp, len(splits.train),
             len(splits.val) if splits.val else 0, len(splits.classes), per_epoch, start_step,
             total_steps)
    if sink_mode(cfg.train, target):
        log.info("data sink requested; this runner feeds steps from the host (sink not used)")

    def save_checkpoint(epoch: int, step: int, kind: str) -> Optional[Path]:
        if not writer_rank:
            return None
        meta = dict(base_meta, epoch=epoch, step=step, kind=kind)
        path = manager.save(state(), meta)
        writer.write("checkpoint", path=path.name, epoch=epoch, step=step, kind=kind)
        events.on_checkpoint(path, meta)
        return path

    def run_eval(epoch: int, step: int) -> Optional[dict]:
        if splits.val is None:
            return None
        eval_net = net
        if ema:
            eval_net = build_model(cfg.model.arch, len(splits.classes), cfg.model.width_mult,
                                   cfg.model.dropout, cfg.model.bn_momentum,
                                   cfg.model.depthwise_padding)
            ema.copy_to(eval_net)
        result = evaluate(eval_net, splits.val, cfg.data, cfg.train.label_smoothing, rank, world)
        train_step.set_train(True)
        result.update(epoch=epoch, step=step)
        log.info("epoch %d eval: %s", epoch + 1, format_result(result, f"step {step}"))
        writer.write("eval", **result)
        events.on_eval(result)
        return result

    # The loop
    step = start_step
    best: Optional[dict] = None
    last_saved_step = start_step if resume else -1
    stopped = False
    train_start = time.time()
    for epoch in range(start_step // per_epoch, cfg.train.epochs):
        if step >= total_steps or stopped:
            break
        skip = step - epoch * per_epoch
        corrupt = CorruptImages(fail_fast=cfg.data.on_corrupt == "fail")
        dataset = build_train_dataset(splits.train, cfg.data, cfg.train.seed, epoch, rank, world,
                                      skip_batches=skip, corrupt=corrupt)
        epoch_start = interval_start = time.time()
        epoch_losses, pending = [], []
        for image, label in guarded(dataset.create_tuple_iterator(num_epochs=1), corrupt):
            for dropout in dropouts:  # masks keyed by step: a resumed run replays them exactly
                dropout.draw(cfg.data.batch_size, cfg.train.seed, rank, step)
            pending.append(train_step(image, label))
            if ema:
                ema()
            step += 1
            at_end = step >= total_steps or step % per_epoch == 0
            if step % cfg.train.log_interval == 0 or at_end:
                losses = [float(x.asnumpy()) for x in pending]
                epoch_losses += losses
                pending = []
                elapsed = time.time() - interval_start
                ips = len(losses) * global_batch / max(elapsed, 1e-9)
                current_lr = float(lr[min(step - 1, len(lr) - 1)])
                log.info("epoch: %d step: %d, loss is %.6f, lr %.6f, %.1f img/s", epoch + 1,
                         step - epoch * per_epoch, losses[-1], current_lr, ips)
                writer.write("step", epoch=epoch, step=step, loss=losses[-1],
                             loss_mean=float(np.mean(losses)), lr=current_lr, images_per_sec=ips)
                events.on_step_end({"epoch": epoch, "step": step, "loss": losses[-1],
                                    "lr": current_lr, "images_per_sec": ips})
                interval_start = time.time()
            if cfg.checkpoint.interval_steps and step % cfg.checkpoint.interval_steps == 0:
                save_checkpoint(epoch, step, "step")
                last_saved_step = step
            if step >= total_steps:
                break
            if events.stop_requested():
                stopped = True
                break
        epoch_losses += [float(x.asnumpy()) for x in pending]
        if corrupt.files:
            log.warning("epoch %d: skipped %d unreadable image(s), e.g. %s", epoch + 1,
                        len(corrupt.files), corrupt.files[0])
            writer.write("corrupt", epoch=epoch, count=len(corrupt.files), files=corrupt.files[:20])
        steps_done = len(epoch_losses)
        if steps_done == 0:
            continue
        epoch_ms = (time.time() - epoch_start) * 1000
        avg_loss = float(np.mean(epoch_losses))
        log.info("epoch time: %.3f, per step time: %.3f, avg loss: %.3f", epoch_ms,
                 epoch_ms / steps_done, avg_loss)
        epoch_done = step % per_epoch == 0
        writer.write("epoch", epoch=epoch, step=step, avg_loss=avg_loss, epoch_time_ms=epoch_ms,
                     per_step_ms=epoch_ms / steps_done, complete=epoch_done)
        events.on_epoch_end({"epoch": epoch, "step": step, "avg_loss": avg_loss,
                             "epoch_time_ms": epoch_ms, "per_step_ms": epoch_ms / steps_done})
        if stopped:
            break
        if epoch_done and cfg.checkpoint.interval_epochs and (epoch + 1) % cfg.checkpoint.interval_epochs == 0 \
                and last_saved_step != step:
            save_checkpoint(epoch + 1 if epoch_done else epoch, step, "epoch")
            last_saved_step = step
        if epoch_done and cfg.train.eval_interval and (epoch + 1) % cfg.train.eval_interval == 0 \
                and step < total_steps:
            result = run_eval(epoch, step)
            if result and (best is None or result["Top_1_Acc"] > best["Top_1_Acc"]):
                best = result
                if writer_rank:
                    manager.save_best(state(), dict(base_meta, epoch=epoch + 1, step=step,
                                                    kind="best", eval=result))

    # The end: a final checkpoint (also when stopped early), then the final evaluation
    final_epoch = step // per_epoch
    final_path = manager.folder / ckpt.checkpoint_name(cfg.checkpoint.prefix, final_epoch, step)
    if last_saved_step != step:
        final_path = save_checkpoint(final_epoch, step, "stop" if stopped else "final") or final_path
    final_eval = None
    if not stopped and cfg.train.eval_at_end and step >= total_steps:
        final_eval = run_eval(final_epoch - 1 if step % per_epoch == 0 else final_epoch, step)
        if final_eval and (best is None or final_eval["Top_1_Acc"] >= best["Top_1_Acc"]):
            best = final_eval
            if writer_rank:
                manager.save_best(state(), dict(base_meta, epoch=final_epoch, step=step,
                                                kind="best", eval=final_eval))
    summary = {"status": "stopped" if stopped else "completed", "step": step,
               "epoch": final_epoch, "steps_per_epoch": per_epoch, "start_step": start_step,
               "seconds": round(time.time() - train_start, 1), "rank": rank, "world": world,
               "device_target": target, "amp_level": amp, "final_checkpoint": str(final_path),
               "final_eval": final_eval, "best_eval": best, "classes": list(splits.classes)}
    if writer_rank:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    events.on_train_end(summary)
    return summary
