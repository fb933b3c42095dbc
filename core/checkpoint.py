"""Training checkpoints: one MindSpore .ckpt holding weights, optimizer state and run metadata.

A checkpoint carries everything a resume needs (weights, BN statistics, optimizer moments and
step counter, EMA weights, epoch, global step, config, class list), is written under a
temporary name and renamed, and is CRC-checked on load. .ckpt files are protobuf: loading one
never executes code.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import mindspore as ms

from core.nn.dropout import is_mask

log = logging.getLogger("core.checkpoint")
META_KEY = "runner_meta"
FORMAT_VERSION = 1
RUNNER_NAME = re.compile(r"^(?P<prefix>.+)-e(?P<epoch>\d+)-s(?P<step>\d+)\.ckpt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: one line naming the file and the fix."""


@dataclass
class Checkpoint:
    params: dict            # name -> Parameter
    meta: dict              # epoch, step, steps_per_epoch, config, classes, kind

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))


def save(path: str | os.PathLike, params: Iterable, meta: dict) -> Path:
    """Write atomically: MindSpore writes `<name>.tmp.ckpt`, then it is renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.ckpt")
    entries = [{"name": p.name, "data": p} for p in params]
    meta = dict(meta, format_version=FORMAT_VERSION)
    try:
        ms.save_checkpoint(entries, str(tmp), append_dict={META_KEY: json.dumps(meta)},
                           crc_check=True)
        os.replace(tmp, path)
        path.chmod(0o640)  # MindSpore writes 0400; keep-K and re-saves need to replace it
    except Exception as exc:
        for partial in (tmp, tmp.with_suffix(".tmp")):  # ours, and MindSpore's own `<stem>.tmp`
            partial.unlink(missing_ok=True)
        raise CheckpointError(f"could not write checkpoint {path}: {exc} "
                              f"(check free space and permissions of {path.parent})") from exc
    return path


RESUME_ADVICE = "use an earlier checkpoint"
PRETRAINED_ADVICE = ("pass a MindSpore .ckpt of weights (written by this runner or the model zoo; "
                     "convert other frameworks' weights with the convert command), and fetch it "
                     "again if it was cut short")


def load(path: str | os.PathLike, advice: str = RESUME_ADVICE) -> Checkpoint:
    """The checkpoint at `path`; CheckpointError ending in `advice` when it does not load (an
    earlier checkpoint helps a resume, not a --pre_trained file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (pass an existing .ckpt file)")
    try:
        raw = ms.load_checkpoint(str(path), crc_check=True)
    except Exception as exc:  # MindSpore raises ValueError/RuntimeError on corrupt files
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt ({type(exc).__name__}); "
                              f"{advice}") from None
    meta_text = raw.pop(META_KEY, None)
    meta = json.loads(meta_text) if isinstance(meta_text, str) else {}
    params = {k: v for k, v in raw.items() if isinstance(v, ms.Parameter)}
    return Checkpoint(params, meta)


def restore(cells: Iterable, checkpoint: Checkpoint, skip_prefixes: tuple = ()) -> None:
    """Load every parameter of `cells`; a parameter missing from the file is an error, since
    a silent partial restore would resume a different run."""
    for cell in cells:
        wanted = [p for p in cell.get_parameters()
                  if not p.name.startswith(skip_prefixes) and not is_mask(p.name)]
        missing = [p.name for p in wanted if p.name not in checkpoint.params]
        if missing:
            raise CheckpointError(f"checkpoint lacks {len(missing)} parameter(s) of this run, e.g. "
                                  f"'{missing[0]}' (was it written for another model or optimizer?)")
        for p in wanted:
            src = checkpoint.params[p.name]
            if tuple(src.shape) != tuple(p.shape):
                raise CheckpointError(f"checkpoint parameter '{p.name}' has shape {tuple(src.shape)}, "
                                      f"the model needs {tuple(p.shape)} (check model.num_classes "
                                      f"and model.width_mult)")
            p.set_data(src.data.astype(p.dtype) if src.dtype != p.dtype else src.data)


def load_pretrained(net, path: str | os.PathLike, classifier_prefixes: tuple = (),
                    checkpoint: Optional[Checkpoint] = None) -> list[str]:
    """Weights for fine-tuning: take every matching parameter; classifier parameters whose shape
    differs (another class count) are left at their fresh init. Returns the names left fresh.
    `checkpoint`: `path` already loaded, if the caller has it."""
    checkpoint = checkpoint or load(path)
    fresh = []
    matched = 0
    for p in net.get_parameters():
        if is_mask(p.name):
            continue
        src = checkpoint.params.get(p.name)
        if src is not None and tuple(src.shape) == tuple(p.shape):
            p.set_data(src.data.astype(p.dtype) if src.dtype != p.dtype else src.data)
            matched += 1
        elif p.name.startswith(classifier_prefixes):
            fresh.append(p.name)
        else:
            reason = "missing" if src is None else f"shape {tuple(src.shape)} vs {tuple(p.shape)}"
            raise CheckpointError(f"pre-trained checkpoint {path} does not fit this model: "
                                  f"'{p.name}' {reason} (check model.arch and model.width_mult)")
    log.info("pre-trained weights: %d parameters loaded from %s; fresh: %s", matched, path,
             ", ".join(fresh) or "none")
    return fresh


def checkpoint_name(prefix: str, epoch: int, step: int) -> str:
    """A periodic checkpoint's file name (core.checkpoint_store reads the step back from it)."""
    return f"{prefix}-e{epoch:04d}-s{step:08d}.ckpt"


def step_of_name(name: str) -> int:
    """Global step from a runner checkpoint name (-1 for other names)."""
    m = RUNNER_NAME.match(name)
    return int(m.group("step")) if m else -1


def step_of_checkpoint(path: str | os.PathLike) -> int:
    """Global step of a checkpoint: from its runner name, else from its metadata."""
    step = step_of_name(Path(path).name)
    return step if step >= 0 else load(path).step
