"""ImageFolder discovery and the MindSpore input pipelines for training and evaluation.

The sample order is decided here, in numpy, from (seed, epoch): every rank can compute its
own shard, a resumed run can rebuild the order of the epoch it stopped in, and evaluation can
cover every image exactly once however the set divides into ranks and batches.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from core.jpeg_check import jpeg_header_problem

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".JPEG", ".JPG", ".PNG")


class DatasetError(ValueError):
    """A problem with the dataset on disk: one line naming the path and the fix."""


@dataclass(frozen=True)
class ImageList:
    """Files and integer labels of one split; labels index the sorted class names."""
    root: str
    files: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.files)


def list_classes(split_dir: str | os.PathLike) -> list[str]:
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DatasetError(f"dataset folder not found: {split_dir} (expected an ImageFolder: "
                           f"<root>/train/<class>/*.jpg and <root>/val/<class>/*.jpg)")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"no class folders in {split_dir} (put each class's images in "
                           f"{split_dir}/<class_name>/)")
    return classes


def scan_split(split_dir: str | os.PathLike, classes: Optional[Sequence[str]] = None) -> ImageList:
    """List images of a split. With `classes` given (the training classes), the split must not
    hold a class outside them: a val class unknown to the model cannot be scored."""
    split_dir = Path(split_dir)
    found = list_classes(split_dir)
    if classes is None:
        classes = found
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DatasetError(f"{split_dir} has class folder(s) {extra[:5]} that the training set "
                               f"lacks; remove them or add them to the training set")
    index = {name: i for i, name in enumerate(classes)}
    files, labels = [], []
    for name in found:
        folder = split_dir / name
        images = sorted(e.name for e in os.scandir(folder)
                        if e.is_file() and e.name.endswith(IMAGE_EXTENSIONS))
        if not images:
            raise DatasetError(f"class folder {folder} holds no images (.jpg/.jpeg/.png/.bmp); "
                               f"add images or remove the folder")
        files.extend(str(folder / f) for f in images)
        labels.extend([index[name]] * len(images))
    return ImageList(str(split_dir), tuple(files), tuple(labels), tuple(classes))


def train_order(num_samples: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """This rank's sample indices for one epoch: a seeded shuffle, cut to a multiple of the
    world size so every rank takes the same number of steps, then strided by rank."""
    order = np.random.default_rng([seed, epoch]).permutation(num_samples)
    usable = num_samples - num_samples % world
    return order[:usable][rank::world]


def eval_order(num_samples: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """Every image exactly once across ranks, in file order (shards may differ by one)."""
    return np.arange(num_samples)[rank::world]


def looks_like_image(data: bytes) -> bool:
    """Cheap structural check (no decode): JPEG start and end markers and sound JPEG headers
    (core/jpeg_check.py: a damaged header crashes MindSpore's decoder), PNG/BMP signatures.
    Catches truncated JPEGs and non-image files before they reach the decoder."""
    if data[:2] == b"\xff\xd8":
        return data.rstrip(b"\x00")[-2:] == b"\xff\xd9" and jpeg_header_problem(data) is None
    return data[:8] == b"\x89PNG\r\n\x1a\n" or data[:2] == b"BM"


class CorruptImages:
    """Counts unreadable images met by the pipelines; with fail_fast, the first one stops the run."""

    def __init__(self, fail_fast: bool = False):
        self.fail_fast = fail_fast
        self.files: list[str] = []
        self.fatal: Optional[str] = None  # the message, once a fail-fast error was raised

    def report(self, path: str) -> None:
        if self.fail_fast:
            self.fatal = (f"corrupt or non-image file {path}; remove or replace it, or set "
                          f"data.on_corrupt=skip to skip such files")
            raise DatasetError(self.fatal)
        self.files.append(path)

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


class _FileSource:
    """Random-access source of (JPEG bytes, label) for GeneratorDataset, from position `start`
    of the shard's order on (a resumed epoch starts at its first unseen batch).

    A corrupt file is replaced by the next readable sample of the same shard (deterministic,
    so resume is unaffected) and reported to `corrupt`, never silently."""

    def __init__(self, images: ImageList, indices: np.ndarray, corrupt: Optional[CorruptImages] = None,
                 start: int = 0):
        self.files = images.files
        self.labels = images.labels
        self.indices = indices
        self.corrupt = corrupt or CorruptImages()
        self.start = start

    def __len__(self) -> int:
        return len(self.indices) - self.start

    def __getitem__(self, i: int):
        for attempt in range(len(self.indices)):
            j = int(self.indices[(self.start + i + attempt) % len(self.indices)])
            with open(self.files[j], "rb") as fh:
                data = fh.read()
            if looks_like_image(data):
                return np.frombuffer(data, np.uint8), np.int32(self.labels[j])
            self.corrupt.report(self.files[j])
        raise DatasetError(f"no readable image in this shard of {Path(self.files[0]).parent.parent}")


def pixel_normalization(data_cfg) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) on the 0-255 pixel scale."""
    return [m * 255 for m in data_cfg.mean], [s * 255 for s in data_cfg.std]


def _normalize_ops(data_cfg):
    from mindspore.dataset import vision
    mean, std = pixel_normalization(data_cfg)
    return [vision.Normalize(mean=mean, std=std), vision.HWC2CHW()]


def train_transforms(data_cfg) -> list:
    """RandomCropDecodeResize, flip, colour jitter (the reference recipe); uint8 HWC out.

    Normalisation and the HWC->CHW transpose of training batches run in the training graph
    (core.train.NetWithLoss): on the host they cost about 17% of the pipeline's images/s on
    CPU, and uint8 batches are 4x smaller to hand to the device. Eval batches are normalised
    here (eval, predict and exported graphs take float NCHW)."""
    from mindspore.dataset import vision
    ops = [vision.RandomCropDecodeResize(data_cfg.image_size, scale=tuple(data_cfg.crop_scale),
                                         ratio=tuple(data_cfg.crop_ratio))]
    if data_cfg.hflip > 0:
        ops.append(vision.RandomHorizontalFlip(prob=data_cfg.hflip))
    brightness, contrast, saturation = data_cfg.color_jitter
    if brightness or contrast or saturation:
        ops.append(vision.RandomColorAdjust(brightness=brightness, contrast=contrast,
                                            saturation=saturation))
    return ops


def native_augmentation(data_cfg) -> bool:
    """Whether training images go through the project's native operator (core.jpeg_augment):
    data.decoder=native, or auto when `make kernels` built it; else MindSpore's ops."""
    choice = data_cfg.decoder
    if choice == "mindspore":
        return False
    from core import jpeg_augment
    if jpeg_augment.available():
        return True
    if choice == "native":
        raise DatasetError(f"data.decoder=native but {jpeg_augment.load_error()}; run `make kernels` "
                           f"or set data.decoder=auto")
    return False


def native_train_pipeline(rows, params: np.ndarray, data_cfg, workers: int):
    """Batches of natively augmented images from `rows` (image bytes, label), whose i-th row
    gets params[i] (core.jpeg_augment.draw_params). Each batch is augmented by one call in
    one of `workers` threads (the native decoder runs without the GIL)."""
    from core.jpeg_augment import BatchAugment
    return rows.batch(data_cfg.batch_size, drop_remainder=True, input_columns=["image"],
                      per_batch_map=BatchAugment(data_cfg, params),
                      num_parallel_workers=usable_workers(workers), python_multiprocessing=False)


def eval_transforms(data_cfg) -> list:
    """Decode, resize the shorter side, centre crop, normalise, CHW."""
    from mindspore.dataset import vision
    return [vision.Decode(), vision.Resize(data_cfg.eval_resize),
            vision.CenterCrop(data_cfg.image_size)] + _normalize_ops(data_cfg)


def usable_workers(requested: int) -> int:
    """MindSpore refuses more parallel workers than CPUs; a recipe written for a 192-core
    Ascend server must still run on a laptop."""
    return max(1, min(requested, os.cpu_count() or 1))


def _source_dataset(images: ImageList, indices: np.ndarray, corrupt: Optional[CorruptImages],
                    start: int = 0):
    import mindspore.dataset as ds
    return ds.GeneratorDataset(_FileSource(images, indices, corrupt, start), column_names=["image", "label"],
                               shuffle=False, num_parallel_workers=1, python_multiprocessing=False)


def _pipeline(images: ImageList, indices: np.ndarray, ops: list, batch_size: int, workers: int,
              drop_remainder: bool, corrupt: Optional[CorruptImages] = None):
    dataset = _source_dataset(images, indices, corrupt)
    dataset = dataset.map(operations=ops, input_columns="image", num_parallel_workers=usable_workers(workers))
    return dataset.batch(batch_size, drop_remainder=drop_remainder)


def augmentation_seed(seed: int, epoch: int, rank: int) -> int:
    """Distinct per (epoch, rank) and reproducible, so a resumed epoch sees the same crops."""
    return int(np.random.default_rng([seed, epoch, rank, 7]).integers(0, 2 ** 31 - 1))


def build_train_dataset(images: ImageList, data_cfg, seed: int, epoch: int, rank: int = 0,
                        world: int = 1, skip_batches: int = 0,
                        corrupt: Optional[CorruptImages] = None):
    """The training pipeline of one epoch for one rank: uint8 NHWC image batches and labels.

    A resumed epoch sees exactly the augmentations of an uninterrupted run. With the native
    operator every draw belongs to a sample position, so the pipeline starts at the first
    unseen batch; with MindSpore's ops (which draw per row in pipeline order) the consumed
    batches are decoded again and skipped.
    """
    if not isinstance(images, ImageList):  # a packed split (core.packed)
        from core.packed import build_packed_train_dataset
        return build_packed_train_dataset(images, data_cfg, seed, epoch, rank, world, skip_batches,
                                          corrupt)
    indices = train_order(len(images), seed, epoch, rank, world)
    if native_augmentation(data_cfg):
        from core.jpeg_augment import draw_params
        start = skip_batches * data_cfg.batch_size
        params = draw_params(len(indices), seed, epoch, rank, start)
        return native_train_pipeline(_source_dataset(images, indices, corrupt, start), params,
                                     data_cfg, data_cfg.workers)
    import mindspore.dataset as ds
    ds.config.set_seed(augmentation_seed(seed, epoch, rank))
    dataset = _pipeline(images, indices, train_transforms(data_cfg), data_cfg.batch_size,
                        data_cfg.workers, drop_remainder=True, corrupt=corrupt)
    if skip_batches:
        dataset = dataset.skip(skip_batches)
    return dataset


def steps_per_epoch(num_samples: int, batch_size: int, world: int = 1) -> int:
    return (num_samples - num_samples % world) // world // batch_size


def build_eval_dataset(images: ImageList, data_cfg, rank: int = 0, world: int = 1,
                       corrupt: Optional[CorruptImages] = None):
    """Every image of this rank's shard once; the last batch may be partial. An unreadable
    image fails evaluation (a score over a silently different set would mislead)."""
    if not isinstance(images, ImageList):  # a packed split (core.packed)
        from core.packed import build_packed_eval_dataset
        return build_packed_eval_dataset(images, data_cfg, rank, world, corrupt)
    batch = data_cfg.eval_batch_size or data_cfg.batch_size
    indices = eval_order(len(images), rank, world)
    return _pipeline(images, indices, eval_transforms(data_cfg), batch, data_cfg.workers,
                     drop_remainder=False, corrupt=corrupt or CorruptImages(fail_fast=True))
