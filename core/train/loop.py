"""The training loop, readable top to bottom: build the run, then epoch by epoch train,
checkpoint and validate, then the final checkpoint, evaluation and summary.

Knows local paths and a Config only. Launchers prepare the environment (staging, ranks,
devices) and follow the run through callbacks.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from core.train.callbacks import Callback, CallbackList
from core.train.checkpoint_saver import CheckpointSaver
from core.config import Config
from core.device import sink_mode
from core.train.divergence import TrainingDiverged, diverged, finite_state, first_bad_step, read_outputs
from core.infer.evaluate import evaluate, format_result
from core.train.metrics import MetricsWriter
from core.data.pipeline import MINDSPORE_DRAWS, CorruptImages, guarded, native_augmentation
from core.train.sample_log import SAMPLES_NAME, SampleLedger
from core.train.run import Run, build_run

__all__ = ["train", "train_one_epoch", "validate", "TrainingDiverged"]

log = logging.getLogger("core.train.loop")


def train(cfg: Config, run_dir: str | Path, resume: Optional[str] = None,
          pretrained: Optional[str] = None, callbacks: tuple[Callback, ...] = ()) -> dict:
    """Train per cfg (left unchanged); returns a summary dict. Rank 0 writes checkpoints and
    metrics. Callbacks get the resolved config in on_train_begin's info["config"]."""
    run_dir = Path(run_dir)
    events = CallbackList(callbacks)
    run = build_run(cfg, resume, pretrained)
    metrics = MetricsWriter(run_dir / "metrics.jsonl" if run.is_writer else None)
    saver = CheckpointSaver(run_dir / "checkpoints", run.cfg.checkpoint,
                            finite_state(run.checkpoint_state, lambda: (run.at_step, run.at_epoch,
                                                                        _last_good(saver))),
                            {"steps_per_epoch": run.per_epoch, "config": run.cfg.to_dict(),
                             "classes": list(run.splits.classes), "world": run.world,
                             "global_batch": run.global_batch},
                            run.is_writer, metrics, events, run.start_step if resume else -1)
    events.on_train_begin(run.begin_info(run_dir))
    _log_plan(run)

    started = time.time()
    step, stopped = run.start_step, False
    ledger = _sample_ledger(run, run_dir)
    try:
        for epoch in range(run.start_step // run.per_epoch, run.cfg.train.epochs):
            if step >= run.total_steps or stopped:
                break
            step, stopped, steps_done = train_one_epoch(run, epoch, step, saver, metrics, events,
                                                        ledger)
            if steps_done == 0 or stopped or step % run.per_epoch:
                continue  # checkpoints and validation follow complete epochs only
            saver.after_epoch(epoch, step)
            if _validation_due(run, epoch, step):
                saver.offer_best(validate(run, step, metrics, events), epoch + 1, step)
    finally:
        if ledger:
            ledger.close()

    final_epoch = step // run.per_epoch  # epochs completed: the one numbering of every record
    final_path = saver.final(final_epoch, step, stopped)
    final_eval = None
    if not stopped and run.cfg.train.eval_at_end and step >= run.total_steps:
        final_eval = validate(run, step, metrics, events)
        saver.offer_best(final_eval, final_epoch, step, ties_win=True)
    summary = {"status": "stopped" if stopped else "completed", "step": step,
               "epoch": final_epoch, "steps_per_epoch": run.per_epoch, "start_step": run.start_step,
               "seconds": round(time.time() - started, 1), "rank": run.rank, "world": run.world,
               "device_target": run.target, "amp_level": run.amp, "final_checkpoint": str(final_path),
               "final_eval": final_eval, "best_eval": saver.best, "classes": list(run.splits.classes),
               "overflow_steps": run.overflow_steps}
    if run.is_writer:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    events.on_train_end(summary)
    return summary


class EpochOutcome(NamedTuple):
    step: int          # global step reached
    stopped: bool      # a stop was requested (the callbacks agreed on it)
    steps_done: int    # steps this call ran


def train_one_epoch(run: Run, epoch: int, step: int, saver: CheckpointSaver,
                    metrics: MetricsWriter, events: Callback,
                    ledger: Optional[SampleLedger] = None) -> EpochOutcome:
    """Train epoch `epoch` from global step `step` (mid-epoch after a resume) until its end,
    the run's last step or a stop request. Losses are read from the device only at log
    intervals and before checkpoints (a non-finite one stops the run: core.train.divergence), so
    steps queue up on Ascend/GPU. `ledger` (rank 0, data.sample_log) gets a line per step."""
    cfg = run.cfg
    corrupt = CorruptImages(fail_fast=cfg.data.on_corrupt == "fail")
    dataset = run.splits.train.train_pipeline(cfg.data, cfg.train.seed, epoch, run.rank, run.world,
                                              skip_batches=step - epoch * run.per_epoch,
                                              corrupt=corrupt)
    started = interval_start = time.time()
    losses, read, pending, stopped = [], [], [], False  # read: this interval's, already checked
    batches = dataset.create_tuple_iterator(num_epochs=1)  # the input pipeline starts reading
    _compile_train_step(run, step)
    for image, label in guarded(batches, corrupt):
        _draw_dropout_masks(run, step)
        pending.append(run.train_step(image, label))
        if run.ema:
            run.ema()
        step += 1
        if ledger:
            ledger.write(step)
        run.at_step, run.at_epoch = step, epoch
        # losses are read at log intervals and before every checkpoint (never save a NaN state)
        if _step_checkpoint_due(saver, step):
            read += _read_checked(run, epoch, step, pending, saver)
            pending = []
        if step % cfg.train.log_interval == 0 or step >= run.total_steps or step % run.per_epoch == 0:
            interval = read + _read_checked(run, epoch, step, pending, saver)
            losses += interval
            read, pending = [], []
            _report_interval(run, epoch, step, interval, time.time() - interval_start, metrics, events)
            interval_start = time.time()
        saver.after_step(step // run.per_epoch, step)
        if step >= run.total_steps:
            break
        if events.stop_requested():
            stopped = True
            break
    losses += read + _read_checked(run, epoch, step, pending, saver)
    if corrupt.files:
        first = corrupt.files[0]
        why = corrupt.problems.get(first)
        log.warning("epoch %d: skipped %d unreadable image(s), e.g. %s%s", epoch + 1,
                    len(corrupt.files), first, f" ({why})" if why else "")
        metrics.write("corrupt", epoch=step // run.per_epoch, step=step, count=len(corrupt.files),
                      files=corrupt.files[:20])
    if losses:
        _report_epoch(run, epoch, step, losses, (time.time() - started) * 1000, metrics, events)
    return EpochOutcome(step, stopped, len(losses))


def _step_checkpoint_due(saver: CheckpointSaver, step: int) -> bool:
    return bool(saver.interval_steps) and step % saver.interval_steps == 0


def _last_good(saver: CheckpointSaver):
    """The newest periodic checkpoint: every one was checked finite before it was written."""
    return saver.latest()


def _read_checked(run: Run, epoch: int, step: int, pending: list, saver: CheckpointSaver) -> list:
    """Losses of the queued steps ending at `step`; a non-finite loss of a step that was applied
    stops the run (TrainingDiverged); overflow steps (skipped by the loss-scaled cell) are
    counted in run.overflow_steps."""
    interval, overflowed = read_outputs(pending)
    run.overflow_steps += sum(overflowed)
    run.interval_overflows += sum(overflowed)
    bad = first_bad_step(interval, overflowed, step)
    if bad is not None:
        bad_step, loss = bad
        error = diverged(f"loss is {loss}", bad_step, (bad_step - 1) // run.per_epoch,
                         _last_good(saver))
        log.error("%s", error)
        raise error
    return interval


def _draw_dropout_masks(run: Run, step: int) -> None:
    """The masks of this rank's slice of global step `step`'s batch (core.nn.dropout)."""
    batch = run.cfg.data.batch_size
    for dropout in run.dropouts:
        dropout.draw(batch, run.cfg.train.seed, step, run.rank * batch)


def _compile_train_step(run: Run, step: int) -> None:
    """Compile the train step's graph (once per process) while the input pipeline reads its
    first batches, instead of after the first batch arrived: the first step then waits for the
    longer of the two, not their sum (a stream's first shards, an Ascend compile). The dropout
    masks of `step` are drawn first: the graph takes their shape (batch x features)."""
    if run.compiled:
        return
    import mindspore as ms
    batch, size = run.cfg.data.batch_size, run.cfg.data.image_size
    _draw_dropout_masks(run, step)
    began = time.time()
    run.train_step.compile(ms.Tensor(np.zeros((batch, size, size, 3), np.uint8)),
                           ms.Tensor(np.zeros((batch,), np.int32)))
    run.compiled = True
    log.debug("train step compiled in %.1f s while the first batches were read", time.time() - began)


def validate(run: Run, step: int, metrics: MetricsWriter, events: Callback) -> Optional[dict]:
    """Evaluate on the validation split (EMA weights when on) after global step `step`; None
    without one. Its record's epoch is the number of epochs completed, as everywhere."""
    if run.splits.val is None:
        return None
    cfg = run.cfg
    result = evaluate(run.eval_network(), run.splits.val, cfg.data, cfg.train.label_smoothing,
                      run.rank, run.world)
    run.train_step.set_train(True)
    epoch = step // run.per_epoch
    result.update(epoch=epoch, step=step)
    # the console counts the epoch in progress from 1, as the model-zoo lines do
    log.info("epoch %d eval: %s", -(-step // run.per_epoch), format_result(result, f"step {step}"))
    metrics.write("eval", **result)
    events.on_eval(result)
    return result


def _validation_due(run: Run, epoch: int, step: int) -> bool:
    """Every train.eval_interval epochs, except after the last step (the final eval runs then)."""
    interval = run.cfg.train.eval_interval
    return bool(interval) and (epoch + 1) % interval == 0 and step < run.total_steps


def _sample_ledger(run: Run, run_dir: Path) -> Optional[SampleLedger]:
    """Rank 0's samples.jsonl writer when data.sample_log is on."""
    if not (run.cfg.data.sample_log and run.is_writer):
        return None
    return SampleLedger(run_dir / SAMPLES_NAME, run.splits.train, run.cfg.data, run.cfg.train.seed,
                        run.global_batch, run.per_epoch).open()


def _log_plan(run: Run) -> None:
    splits = run.splits
    log.info("rank %d/%d on %s, amp %s, %d train / %d val images, %d classes, %d steps/epoch of "
             "global batch %d, steps %d..%d", run.rank, run.world, run.target, run.amp,
             len(splits.train), len(splits.val) if splits.val else 0, len(splits.classes),
             run.per_epoch, run.global_batch, run.start_step, run.total_steps)
    data = run.cfg.data
    if data.shuffle_window:
        if splits.train.shard_sizes():
            log.info("shard-window shuffle: each epoch deals the %d shards into windows of at most "
                     "%d, read one after another, samples shuffled within a window",
                     len(splits.train.shard_sizes()), data.shuffle_window)
        else:
            log.info("data.shuffle_window %d: %s is not stored in shards, shuffled in full",
                     data.shuffle_window, data.path)
    if not native_augmentation(data):
        log.info("%s", MINDSPORE_DRAWS)
    if sink_mode(run.cfg.train, run.target):
        log.info("data sink requested; this runner feeds steps from the host (sink not used)")


def _report_interval(run: Run, epoch: int, step: int, losses: list, seconds: float,
                     metrics: MetricsWriter, events: Callback) -> None:
    """The model-zoo step line, a metrics record and on_step_end for one log interval."""
    ips = len(losses) * run.cfg.data.batch_size * run.world / max(seconds, 1e-9)
    lr = run.lr_at(step)
    log.info("epoch: %d step: %d, loss is %.6f, lr %.6f, %.1f img/s", epoch + 1,
             step - epoch * run.per_epoch, losses[-1], lr, ips)
    extra = {}
    if run.loss_scaled:  # MindSpore skipped these steps (gradient overflow at this loss scale)
        extra = {"overflow_steps": run.interval_overflows, "overflow_steps_total": run.overflow_steps}
        if run.interval_overflows:
            log.warning("skipped %d step(s) of this interval on gradient overflow (loss scale %g); "
                        "%d so far", run.interval_overflows, run.cfg.train.loss_scale,
                        run.overflow_steps)
        run.interval_overflows = 0
    metrics.write("step", epoch=step // run.per_epoch, step=step, loss=losses[-1],
                  loss_mean=float(np.mean(losses)),
                  lr=lr, images_per_sec=ips, **extra)
    events.on_step_end({"epoch": epoch, "step": step, "loss": losses[-1], "lr": lr,
                        "images_per_sec": ips})


def _report_epoch(run: Run, epoch: int, step: int, losses: list, epoch_ms: float,
                  metrics: MetricsWriter, events: Callback) -> None:
    """The model-zoo monitor line, a metrics record and on_epoch_end."""
    avg_loss = float(np.mean(losses))
    per_step_ms = epoch_ms / len(losses)
    log.info("epoch time: %.3f, per step time: %.3f, avg loss: %.3f", epoch_ms, per_step_ms, avg_loss)
    metrics.write("epoch", epoch=step // run.per_epoch, step=step, avg_loss=avg_loss, epoch_time_ms=epoch_ms,
                  per_step_ms=per_step_ms, complete=step % run.per_epoch == 0)
    events.on_epoch_end({"epoch": epoch, "step": step, "avg_loss": avg_loss,
                         "epoch_time_ms": epoch_ms, "per_step_ms": per_step_ms})
