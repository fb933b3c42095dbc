"""One way to describe a dataset: a source of splits, chosen here and nowhere else.

A source is a dataset root (`DataSource`): an ImageFolder (core.data.imagefolder) or packed
MindRecord shards (core.data.packed). Its splits (`DataSplit`) all offer the same small protocol:
their length and class names, a training pipeline and an evaluation pipeline; the source checks
itself with `verify`. Trainer, evaluation and staging use only this protocol, so a new kind of
source (say, an ImageNet archive) is one more class and one more line in `open_dataset`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol, Sequence

from core.config import Config, ConfigError
from core.data.imagefolder import ImageFolder
from core.data.packed import PackedDataset, is_packed
from core.data.pipeline import CorruptImages, DatasetError


class DataSplit(Protocol):
    """One split of a dataset, whatever its storage."""
    classes: tuple[str, ...]

    def __len__(self) -> int: ...

    def train_pipeline(self, data_cfg, seed: int, epoch: int, rank: int = 0, world: int = 1,
                       skip_batches: int = 0, corrupt: Optional[CorruptImages] = None):
        """One epoch of this rank's uint8 NHWC training batches (core.data.pipeline.train_pipeline)."""

    def shard_sizes(self) -> Optional[Sequence[int]]:
        """Samples per shard in file order (the shard-window shuffle's blocks), or None."""

    def epoch_order(self, data_cfg, seed: int, epoch: int):
        """The sample index at each global position of the epoch (core.data.pipeline.epoch_order)."""

    def sample_names(self, indices: Sequence[int]) -> list[str]:
        """The samples' file paths relative to the split (the sample ledger's names)."""

    def eval_pipeline(self, data_cfg, rank: int = 0, world: int = 1,
                      corrupt: Optional[CorruptImages] = None):
        """This rank's share of every image once, as float NCHW batches."""


class DataSource(Protocol):
    """A dataset root: its splits by folder name, and a check of its files."""

    def has_split(self, name: str) -> bool: ...

    def split(self, name: str, classes: Optional[Sequence[str]] = None) -> DataSplit:
        """With `classes` (the training classes) labels follow them; a class outside them is
        refused (a val class unknown to the model cannot be scored)."""

    def verify(self, workers: Optional[int] = None, reuse: bool = False) -> dict:
        """Check the files against what the source says it holds; DatasetError if not."""


# Sources an outer layer built for a data path core cannot open itself (an s3:// or obs:// pack
# streamed into a local cache: core.data.streamed, built by cloud.job), by that path.
_PROVIDED: dict[str, DataSource] = {}


def provide_source(path: str, source: Optional[DataSource]) -> None:
    """Make `open_dataset(path)` return `source` in this process (None: forget it)."""
    if source is None:
        _PROVIDED.pop(str(path), None)
    else:
        _PROVIDED[str(path)] = source


def open_dataset(root: str | os.PathLike) -> DataSource:
    """The source at `root`: one provided for it (provide_source), packed shards when it holds
    a pack's index, else an ImageFolder."""
    provided = _PROVIDED.get(str(root))
    if provided is not None:
        return provided
    return PackedDataset(root) if is_packed(root) else ImageFolder(root)


@dataclass
class Splits:
    train: DataSplit
    val: Optional[DataSplit]
    classes: tuple


def load_splits(cfg: Config, need_val: bool = True) -> Splits:
    """The training split (and the validation split, when there is one) of cfg.data, with
    model.num_classes checked against the training classes, of which there must be two or
    more (label smoothing divides by classes - 1; one class has nothing to learn)."""
    if not cfg.data.path:
        raise DatasetError("no dataset given: set data.path (or --dataset_path) to an ImageFolder root")
    source = open_dataset(cfg.data.path)
    train = source.split(cfg.data.train_dir)
    if len(train.classes) < 2:
        raise DatasetError(f"{Path(cfg.data.path) / cfg.data.train_dir} has one class folder "
                           f"({train.classes[0]!r}); classification needs at least 2: add a folder "
                           f"per class")
    val = None
    if need_val and source.has_split(cfg.data.val_dir):
        val = source.split(cfg.data.val_dir, train.classes)
    found = len(train.classes)
    if cfg.model.num_classes is not None and cfg.model.num_classes != found:
        raise ConfigError(f"model.num_classes is {cfg.model.num_classes} but "
                          f"{Path(cfg.data.path) / cfg.data.train_dir} has {found} class folders; "
                          f"set model.num_classes={found} or null")
    return Splits(train, val, train.classes)
