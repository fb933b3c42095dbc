"""What every dataset source shares: sample order, transforms, and the MindSpore pipelines.

The sample order is decided here, in numpy, from (seed, epoch): every rank can compute its
own shard, a resumed run can rebuild the order of the epoch it stopped in, and evaluation can
cover every image exactly once however the set divides into ranks and batches. A source
(core.data.imagefolder, core.data.packed) only supplies rows of (image bytes, label) in a given order;
`train_pipeline` and `eval_pipeline` turn them into batches the same way for every source.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np

from core.data.image_formats import for_mindspore, image_problem, set_max_image_pixels
from core.data.normalization import pixel_normalization


class DatasetError(ValueError):
    """A problem with the dataset on disk: one line naming the path and the fix."""


# rows(indices, start, corrupt, workers): a MindSpore dataset of (image bytes, label) for the
# samples indices[start:], unreadable ones replaced and reported (CorruptImages), read with up to
# `workers` threads; what a source supplies.
Rows = Callable[[np.ndarray, int, "CorruptImages", int], object]


def train_order(num_samples: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """This rank's sample indices for one epoch: a seeded shuffle, cut to a multiple of the
    world size so every rank takes the same number of steps, then strided by rank."""
    order = np.random.default_rng([seed, epoch]).permutation(num_samples)
    usable = num_samples - num_samples % world
    return order[:usable][rank::world]


def eval_order(num_samples: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """Every image exactly once across ranks, in file order (shards may differ by one)."""
    return np.arange(num_samples)[rank::world]


def steps_per_epoch(num_samples: int, batch_size: int, world: int = 1) -> int:
    return (num_samples - num_samples % world) // world // batch_size


def looks_like_image(data: bytes) -> bool:
    """Whether a decoder reads the file (core.data.image_formats.image_problem): damaged JPEG headers
    (which crash MindSpore's decoder), truncated files and non-image files are caught here,
    before the decoder."""
    return image_problem(data) is None


class CorruptImages:
    """Counts unreadable images met by the pipelines; with fail_fast, the first one stops the run."""

    def __init__(self, fail_fast: bool = False):
        self.fail_fast = fail_fast
        self.files: list[str] = []
        self.problems: dict[str, Optional[str]] = {}  # file -> why it was skipped
        self.fatal: Optional[str] = None  # the message, once a fail-fast error was raised

    def report(self, path: str, problem: Optional[str] = None) -> None:
        if self.fail_fast and problem and problem.startswith("too large"):
            self.fatal = f"{path}: {problem}"  # not damaged: over data.max_image_pixels
            raise DatasetError(self.fatal)
        if self.fail_fast:
            detail = f" ({problem})" if problem else ""
            self.fatal = (f"corrupt or non-image file {path}{detail}; remove or replace it, or set "
                          f"data.on_corrupt=skip to skip such files")
            raise DatasetError(self.fatal)
        self.files.append(path)
        self.problems.setdefault(path, problem)

    def reraise(self) -> None:
        """The pipeline wraps errors raised in its source; restore the user's one-liner."""
        if self.fatal:
            raise DatasetError(self.fatal) from None


def guarded(iterator, corrupt: CorruptImages):
    """Iterate batches; a fail-fast corrupt image surfaces as the user's DatasetError."""
    try:
        yield from iterator
    except Exception:
        corrupt.reraise()
        raise


def train_transforms(data_cfg) -> list:
    """RandomCropDecodeResize, flip, colour jitter (the reference recipe); uint8 HWC out.
    Formats MindSpore cannot decode reach it as BMP (core.data.image_formats.for_mindspore).

    Normalisation and the HWC->CHW transpose of training batches run in the training graph
    (core.train.run.NetWithLoss): on the host they cost about 17% of the pipeline's images/s on
    CPU, and uint8 batches are 4x smaller to hand to the device. Eval batches are normalised
    here (eval, predict and exported graphs take float NCHW)."""
    from mindspore.dataset import vision
    ops = [for_mindspore, vision.RandomCropDecodeResize(data_cfg.image_size, scale=tuple(data_cfg.crop_scale),
                                         ratio=tuple(data_cfg.crop_ratio))]
    if data_cfg.hflip > 0:
        ops.append(vision.RandomHorizontalFlip(prob=data_cfg.hflip))
    brightness, contrast, saturation = data_cfg.color_jitter
    if brightness or contrast or saturation:
        ops.append(vision.RandomColorAdjust(brightness=brightness, contrast=contrast,
                                            saturation=saturation))
    return ops


def eval_transforms(data_cfg) -> list:
    """Decode (formats MindSpore lacks through Pillow), resize the shorter side, centre crop,
    normalise, CHW: MindSpore's ops, used with data.decoder=mindspore or without the native
    library; core.data.jpeg_eval does the same in one native call."""
    from mindspore.dataset import vision
    mean, std = pixel_normalization(data_cfg)
    return [for_mindspore, vision.Decode(), vision.Resize(data_cfg.eval_resize),
            vision.CenterCrop(data_cfg.image_size), vision.Normalize(mean=mean, std=std),
            vision.HWC2CHW()]


def native_augmentation(data_cfg) -> bool:
    """Whether images go through the project's native operator (core.data.jpeg_augment for training,
    core.data.jpeg_eval for eval and predict): data.decoder=native, or auto when `make kernels` built
    it; else MindSpore's ops."""
    choice = data_cfg.decoder
    if choice == "mindspore":
        return False
    from core.data import jpeg_augment
    if jpeg_augment.available():
        return True
    if choice == "native":
        raise DatasetError(f"data.decoder=native but {jpeg_augment.load_error()}; run `make kernels` "
                           f"or set data.decoder=auto")
    return False


def usable_workers(requested: int) -> int:
    """MindSpore refuses more parallel workers than CPUs; a recipe written for a 192-core
    Ascend server must still run on a laptop."""
    return max(1, min(requested, os.cpu_count() or 1))


def augmentation_seed(seed: int, epoch: int, rank: int) -> int:
    """Distinct per (epoch, rank) and reproducible, so a resumed epoch sees the same crops."""
    return int(np.random.default_rng([seed, epoch, rank, 7]).integers(0, 2 ** 31 - 1))


def _mapped_batches(rows, ops: list, data_cfg, batch_size: int, drop_remainder: bool):
    dataset = rows.map(operations=ops, input_columns="image",
                       num_parallel_workers=usable_workers(data_cfg.workers))
    return dataset.batch(batch_size, drop_remainder=drop_remainder)


def train_pipeline(rows: Rows, num_samples: int, data_cfg, seed: int, epoch: int, rank: int = 0,
                   world: int = 1, skip_batches: int = 0, corrupt: Optional[CorruptImages] = None):
    """The training pipeline of one epoch for one rank: uint8 NHWC image batches and labels.

    A resumed epoch sees exactly the augmentations of an uninterrupted run. With the native
    operator every draw belongs to a sample position, so the pipeline starts at the first
    unseen batch; with MindSpore's ops (which draw per row in pipeline order) the consumed
    batches are decoded again and skipped.
    """
    corrupt = corrupt or CorruptImages()
    set_max_image_pixels(data_cfg.max_image_pixels)  # the sources' check (image_problem)
    indices = train_order(num_samples, seed, epoch, rank, world)
    if native_augmentation(data_cfg):
        from core.data.jpeg_augment import BatchAugment, draw_params
        start = skip_batches * data_cfg.batch_size
        # each batch is one call in one of data.workers threads (the decoder runs without the GIL)
        return rows(indices, start, corrupt, data_cfg.workers).batch(
            data_cfg.batch_size, drop_remainder=True, input_columns=["image"],
            per_batch_map=BatchAugment(data_cfg, draw_params(len(indices), seed, epoch, rank, start)),
            num_parallel_workers=usable_workers(data_cfg.workers), python_multiprocessing=False)
    import mindspore.dataset as ds
    ds.config.set_seed(augmentation_seed(seed, epoch, rank))
    dataset = _mapped_batches(rows(indices, 0, corrupt, data_cfg.workers), train_transforms(data_cfg), data_cfg,
                              data_cfg.batch_size, drop_remainder=True)
    return dataset.skip(skip_batches) if skip_batches else dataset


def eval_pipeline(rows: Rows, num_samples: int, data_cfg, rank: int = 0, world: int = 1,
                  corrupt: Optional[CorruptImages] = None):
    """Every image of this rank's shard once; the last batch may be partial. An unreadable
    image fails evaluation (a score over a silently different set would mislead)."""
    corrupt = corrupt or CorruptImages(fail_fast=True)
    set_max_image_pixels(data_cfg.max_image_pixels)
    batch_size = data_cfg.eval_batch_size or data_cfg.batch_size
    source = rows(eval_order(num_samples, rank, world), 0, corrupt, data_cfg.workers)
    if native_augmentation(data_cfg):
        from core.data.jpeg_eval import BatchEval
        # float32 NCHW batches as eval_transforms makes them, each one call in a worker thread
        return source.batch(batch_size, drop_remainder=False, input_columns=["image"],
                            per_batch_map=BatchEval(data_cfg),
                            num_parallel_workers=usable_workers(data_cfg.workers),
                            python_multiprocessing=False)
    return _mapped_batches(source, eval_transforms(data_cfg), data_cfg, batch_size, drop_remainder=False)


class RowSplit:
    """Base of a split (core.data.sources.DataSplit) that supplies `rows` (see Rows) and `__len__`:
    its pipelines are the shared ones above."""

    def train_pipeline(self, data_cfg, seed: int, epoch: int, rank: int = 0, world: int = 1,
                       skip_batches: int = 0, corrupt: Optional[CorruptImages] = None):
        return train_pipeline(self.rows, len(self), data_cfg, seed, epoch, rank, world,
                              skip_batches, corrupt)

    def eval_pipeline(self, data_cfg, rank: int = 0, world: int = 1,
                      corrupt: Optional[CorruptImages] = None):
        return eval_pipeline(self.rows, len(self), data_cfg, rank, world, corrupt)
