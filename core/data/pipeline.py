"""What every dataset source shares: sample order, transforms, and the MindSpore pipelines.

The sample order is decided here, in numpy, from (seed, epoch): every rank can compute its
own part, a resumed run can rebuild the order of the epoch it stopped in, and evaluation can
cover every image exactly once however the set divides into ranks and batches. A source
(core.data.imagefolder, core.data.packed) only supplies rows of (image bytes, label) in a given order;
`train_pipeline` and `eval_pipeline` turn them into batches the same way for every source.

Elastic determinism: which sample stands at global position p of epoch e (`epoch_order`) and
its augmentation draws (core.data.jpeg_augment.position_params) depend on (seed, epoch, p) only.
Global step s of an epoch consumes positions [s*G, (s+1)*G), G = the global batch (per-device
batch x processes), and rank r reads the r-th per-device slice of them (`rank_positions`), so a
run continues on another number of processes at the same global batch where it stopped.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import numpy as np

from core.data.image_formats import for_mindspore, image_problem, set_max_image_pixels
from core.data.normalization import pixel_normalization


class DatasetError(ValueError):
    """A problem with the dataset on disk: one line naming the path and the fix."""


# rows(indices, start, corrupt, workers): a MindSpore dataset of (image bytes, label) for the
# samples indices[start:], read with up to `workers` threads; an unreadable one is reported
# (CorruptImages) and replaced by the next readable sample in file order (`replacement`), so
# what a position reads does not depend on the process count. What a source supplies.
Rows = Callable[[np.ndarray, int, "CorruptImages", int], object]

FULL_SHUFFLE = 0  # data.shuffle_window: 0 = one permutation of the whole epoch
_WINDOW_STREAM = 13  # a second key word: the shard-window shuffle's own stream of (seed, epoch)


def shard_windows(num_shards: int, seed: int, epoch: int, window: int) -> list[np.ndarray]:
    """The shards of epoch `epoch` cut into the windows whose samples are shuffled together, in
    the order they are read: as few windows of at most `window` shards as hold them all, of
    sizes that differ by one at most (no small last window).

    Windows are stratified: with C windows, the shards in file order form rows of C neighbours,
    and each row deals one shard to each window in a seeded random assignment; then the windows
    are put in a seeded random order. Every window thus spans the whole file order, so in a
    pack written in class order (as `pack` writes any ImageFolder) a window holds shards of
    classes far apart instead of, by chance, neighbours of the same classes. A streaming reader
    needs the shards of one window at a time (and the next one's, to prefetch)."""
    rng = np.random.default_rng([seed, epoch, _WINDOW_STREAM])
    count = -(-num_shards // window)
    windows: list[list[int]] = [[] for _ in range(count)]
    for first in range(0, num_shards, count):
        row = np.arange(first, min(first + count, num_shards))
        for shard, slot in zip(rng.permutation(row), rng.permutation(count)):
            windows[slot].append(int(shard))
    return [np.array(windows[slot], np.int64) for slot in rng.permutation(count)]


def epoch_order(num_samples: int, seed: int, epoch: int, shard_sizes: Optional[Sequence[int]] = None,
                window: int = FULL_SHUFFLE) -> np.ndarray:
    """The sample index at every global position of epoch `epoch`, a function of (seed, epoch)
    and the source's layout only (never of ranks, processes or workers).

    Without shards (an ImageFolder), with window 0, or with a window holding every shard: one
    seeded permutation of the epoch. Else the shard-window shuffle: shards (consecutive samples,
    `shard_sizes` of them in file order) are dealt into windows of at most `window` shards anew
    each epoch (shard_windows); the samples of each window are shuffled together and the
    windows follow each other, so a reader needs only one window of shards at a time."""
    if not window or not shard_sizes or window >= len(shard_sizes):
        return np.random.default_rng([seed, epoch]).permutation(num_samples)
    starts = np.concatenate([[0], np.cumsum(shard_sizes)]).astype(np.int64)
    if starts[-1] != num_samples:
        raise DatasetError(f"the shards hold {starts[-1]} samples, the split {num_samples}")
    rng = np.random.default_rng([seed, epoch, _WINDOW_STREAM, 1])
    parts = []
    for shards in shard_windows(len(shard_sizes), seed, epoch, window):
        members = np.concatenate([np.arange(starts[k], starts[k + 1]) for k in shards])
        parts.append(rng.permutation(members))
    return np.concatenate(parts)


def rank_positions(steps: int, batch_size: int, rank: int = 0, world: int = 1,
                   first_step: int = 0) -> np.ndarray:
    """The global positions rank `rank` of `world` reads in steps first_step..steps-1 of an
    epoch, in order: step s consumes positions [s*G, (s+1)*G), G = batch_size x world, and rank r
    takes its slice [s*G + r*batch_size, s*G + (r+1)*batch_size)."""
    per_step = batch_size * world
    steps_range = np.arange(first_step, steps, dtype=np.int64)
    return (steps_range[:, None] * per_step + rank * batch_size
            + np.arange(batch_size, dtype=np.int64)).reshape(-1)


def train_order(num_samples: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                batch_size: int = 1, shard_sizes: Optional[Sequence[int]] = None,
                window: int = FULL_SHUFFLE) -> np.ndarray:
    """This rank's sample indices for one epoch, in the order it reads them: its slice of every
    global batch of the epoch's order (epoch_order, rank_positions); the positions after the
    last whole global batch are not read."""
    order = epoch_order(num_samples, seed, epoch, shard_sizes, window)
    steps = steps_per_epoch(num_samples, batch_size, world)
    return order[rank_positions(steps, batch_size, rank, world)]


def eval_order(num_samples: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """Every image exactly once across ranks, in file order (shards may differ by one)."""
    return np.arange(num_samples)[rank::world]


def steps_per_epoch(num_samples: int, batch_size: int, world: int = 1) -> int:
    """Whole global batches (batch_size x world) in an epoch."""
    return num_samples // (batch_size * world)


def replacement(index: int, attempt: int, num_samples: int) -> int:
    """Where an unreadable sample's replacement is searched: attempt k reads the sample k
    places after it in file order (cyclic; attempt 0 is the sample itself). A function of the
    sample alone, so a replaced position reads the same on any number of processes (and,
    files being in class order, usually an image of the same class)."""
    return (int(index) + attempt) % num_samples


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
        """One unreadable file (each file listed once, however often it is met)."""
        if self.fail_fast and problem and problem.startswith("too large"):
            self.fatal = f"{path}: {problem}"  # not damaged: over data.max_image_pixels
            raise DatasetError(self.fatal)
        if self.fail_fast:
            detail = f" ({problem})" if problem else ""
            self.fatal = (f"corrupt or non-image file {path}{detail}; remove or replace it, or set "
                          f"data.on_corrupt=skip to skip such files")
            raise DatasetError(self.fatal)
        if path in self.problems:  # met again: a replacement's search passes it too
            return
        self.files.append(path)
        self.problems[path] = problem

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
    """MindSpore's random ops (data.decoder=mindspore): a seed distinct per (epoch, rank) and
    reproducible, so a resumed epoch on as many processes sees the same crops. Those ops draw
    per row in pipeline order, so their draws cannot follow sample positions: on another number
    of processes the same samples get other crops (MINDSPORE_DRAWS says so in the log)."""
    return int(np.random.default_rng([seed, epoch, rank, 7]).integers(0, 2 ** 31 - 1))


MINDSPORE_DRAWS = ("MindSpore's augmentation ops draw crops, flips and jitter per row in pipeline "
                   "order: a resume on as many processes replays them, one on another number of "
                   "processes reads the same samples with other draws (the native decoder's "
                   "draws follow sample positions: make kernels, data.decoder=native)")


def _mapped_batches(rows, ops: list, data_cfg, batch_size: int, drop_remainder: bool):
    dataset = rows.map(operations=ops, input_columns="image",
                       num_parallel_workers=usable_workers(data_cfg.workers))
    return dataset.batch(batch_size, drop_remainder=drop_remainder)


def train_pipeline(rows: Rows, num_samples: int, data_cfg, seed: int, epoch: int, rank: int = 0,
                   world: int = 1, skip_batches: int = 0, corrupt: Optional[CorruptImages] = None,
                   shard_sizes: Optional[Sequence[int]] = None):
    """The training pipeline of one epoch for one rank: uint8 NHWC image batches (its slice of
    each global batch, data.batch_size per device) and labels.

    A resumed epoch sees exactly the augmentations of an uninterrupted run. With the native
    operator every draw belongs to a sample's global position, so the pipeline starts at the
    first unseen batch, and the draws are the same on any number of processes; with MindSpore's
    ops (which draw per row in pipeline order) the consumed batches are decoded again and
    skipped, and the draws depend on the rank (MINDSPORE_DRAWS).
    """
    corrupt = corrupt or CorruptImages()
    set_max_image_pixels(data_cfg.max_image_pixels)  # the sources' check (image_problem)
    batch = data_cfg.batch_size
    order = epoch_order(num_samples, seed, epoch, shard_sizes, data_cfg.shuffle_window)
    positions = rank_positions(steps_per_epoch(num_samples, batch, world), batch, rank, world)
    indices = order[positions]
    if native_augmentation(data_cfg):
        from core.data.jpeg_augment import BatchAugment
        start = skip_batches * batch
        # each batch is one call in one of data.workers threads (the decoder runs without the GIL)
        return rows(indices, start, corrupt, data_cfg.workers).batch(
            batch, drop_remainder=True, input_columns=["image"],
            per_batch_map=BatchAugment(data_cfg, seed, epoch, positions[start:]),
            num_parallel_workers=usable_workers(data_cfg.workers), python_multiprocessing=False)
    import mindspore.dataset as ds
    ds.config.set_seed(augmentation_seed(seed, epoch, rank))
    dataset = _mapped_batches(rows(indices, 0, corrupt, data_cfg.workers), train_transforms(data_cfg),
                              data_cfg, batch, drop_remainder=True)
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
    """Base of a split (core.data.sources.DataSplit) that supplies `rows` (see Rows), `__len__`
    and `sample_names`: its order and pipelines are the shared ones above. A split stored in
    shards says how many samples each holds (`shard_sizes`) for the shard-window shuffle."""

    def shard_sizes(self) -> Optional[Sequence[int]]:
        """Samples per shard, in file order; None: not stored in shards (shuffled in full)."""
        return None

    def epoch_order(self, data_cfg, seed: int, epoch: int) -> np.ndarray:
        """The sample index at each global position of the epoch (every rank's, in order)."""
        return epoch_order(len(self), seed, epoch, self.shard_sizes(), data_cfg.shuffle_window)

    def train_pipeline(self, data_cfg, seed: int, epoch: int, rank: int = 0, world: int = 1,
                       skip_batches: int = 0, corrupt: Optional[CorruptImages] = None):
        return train_pipeline(self.rows, len(self), data_cfg, seed, epoch, rank, world,
                              skip_batches, corrupt, self.shard_sizes())

    def eval_pipeline(self, data_cfg, rank: int = 0, world: int = 1,
                      corrupt: Optional[CorruptImages] = None):
        return eval_pipeline(self.rows, len(self), data_cfg, rank, world, corrupt)
