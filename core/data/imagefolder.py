"""The ImageFolder source: `<root>/<split>/<class>/*.jpg`, labels by sorted class name.

Image files are named as torchvision's ImageFolder names them, in any case
(core.data.image_formats); everything else in a split is left alone and reported once per split
(how many entries and why), so a photo nobody meant to drop is not dropped in silence.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from core.data.image_formats import IMAGE_EXTENSIONS, has_image_extension, image_problem
from core.data.pipeline import CorruptImages, DatasetError, RowSplit, replacement

log = logging.getLogger("core.data.imagefolder")


@dataclass(frozen=True)
class ImageList(RowSplit):
    """Files and integer labels of one split (a core.data.sources.DataSplit); labels index the sorted
    class names."""
    root: str
    files: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.files)

    def rows(self, indices: np.ndarray, start: int, corrupt: CorruptImages, workers: int = 1):
        """(JPEG bytes, label) of the samples indices[start:], read in one thread (`workers`
        is for the decoding that follows)."""
        import mindspore.dataset as ds
        return ds.GeneratorDataset(_FileSource(self, indices, corrupt, start),
                                   column_names=["image", "label"], shuffle=False,
                                   num_parallel_workers=1, python_multiprocessing=False)

    def sample_names(self, indices: Sequence[int]) -> list[str]:
        """Each sample's path relative to the split ('<class>/<file>'), as a pack names it."""
        cut = len(self.root) + 1
        return [self.files[int(i)][cut:].replace(os.sep, "/") for i in indices]


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
    files, labels, ignored = [], [], Ignored()
    ignored.split_level(split_dir)
    for name in found:
        folder = split_dir / name
        images = ignored.class_folder(folder)
        if not images:
            raise DatasetError(f"class folder {folder} holds no images{ignored.in_folder(folder)}; "
                               f"add images or remove the folder (images end in "
                               f"{', '.join(IMAGE_EXTENSIONS)}, in any case)")
        files.extend(str(folder / f) for f in images)
        labels.extend([index[name]] * len(images))
    if ignored.total():
        log.warning("%s: ignored %s", split_dir, ignored.summary())
    return ImageList(str(split_dir), tuple(files), tuple(labels), tuple(classes))


class Ignored:
    """What a split holds besides its images, counted by reason, for one line per split."""

    def __init__(self):
        self.extensions: Counter = Counter()  # unsupported extension -> files
        self.hidden = self.outside = self.folders = self.not_files = 0
        self.by_folder: dict[Path, Counter] = {}

    def split_level(self, split_dir: Path) -> None:
        """Files beside the class folders (a README, say) are not in any class."""
        for entry in os.scandir(split_dir):
            if entry.name.startswith("."):
                self.hidden += 1
            elif not entry.is_dir():
                self.outside += 1

    def class_folder(self, folder: Path) -> list[str]:
        """The image file names of a class folder, sorted; the rest is counted."""
        images, other = [], Counter()
        for entry in os.scandir(folder):
            if entry.name.startswith("."):  # .DS_Store, AppleDouble ._IMG.jpg, editors' files
                self.hidden += 1
            elif entry.is_dir():
                self.folders += 1
            elif not entry.is_file():  # a broken link, a socket
                self.not_files += 1
            elif has_image_extension(entry.name):
                images.append(entry.name)
            else:
                other[Path(entry.name).suffix.lower() or "(none)"] += 1
        self.extensions.update(other)
        self.by_folder[folder] = other
        return sorted(images)

    def in_folder(self, folder: Path) -> str:
        other = self.by_folder.get(folder)
        if not other:
            return ""
        count = sum(other.values())
        return f" ({count} file{'s' * (count > 1)} with other extensions: {', '.join(sorted(other))})"

    def total(self) -> int:
        return sum(self.extensions.values()) + self.hidden + self.outside + self.folders + self.not_files

    def summary(self) -> str:
        count = self.total()
        parts = []
        if self.extensions:
            unsupported = sum(self.extensions.values())
            parts.append(f"{unsupported} with unsupported extensions ({', '.join(sorted(self.extensions))})")
        if self.hidden:
            parts.append(f"{self.hidden} hidden (name starts with '.')")
        if self.outside:
            parts.append(f"{self.outside} outside the class folders")
        if self.folders:
            parts.append(f"{self.folders} folder{'s' * (self.folders > 1)} inside a class folder (not searched)")
        if self.not_files:
            parts.append(f"{self.not_files} not a regular file (a broken link?)")
        return f"{count} entr{'ies' if count > 1 else 'y'}: {', '.join(parts)}"


class ImageFolder:
    """A dataset root of split folders (a core.data.sources.DataSource)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def has_split(self, name: str) -> bool:
        return (self.root / name).exists()

    def split(self, name: str, classes: Optional[Sequence[str]] = None) -> ImageList:
        return scan_split(self.root / name, classes)

    def verify(self, workers: Optional[int] = None, reuse: bool = False) -> dict:
        """Nothing to check against: an ImageFolder carries no index or checksums (staging
        already compared sizes and ETags with the store)."""
        return {"files": 0, "bytes": 0, "seconds": 0.0}


class _FileSource:
    """Random-access source of (JPEG bytes, label) for GeneratorDataset, from position `start`
    of the rank's order on (a resumed epoch starts at its first unseen batch).

    A corrupt file is replaced by the next readable file after it in file order
    (core.data.pipeline.replacement: the same on any number of processes) and reported to
    `corrupt`, never silently."""

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
        first = int(self.indices[self.start + i])
        for attempt in range(len(self.files)):
            j = replacement(first, attempt, len(self.files))
            if self.files[j] in self.corrupt.problems:
                continue  # known unreadable: not read again
            with open(self.files[j], "rb") as fh:
                data = fh.read()
            problem = image_problem(data)
            if problem is None:
                return np.frombuffer(data, np.uint8), np.int32(self.labels[j])
            self.corrupt.report(self.files[j], problem)
        raise DatasetError(f"no readable image in {Path(self.files[0]).parent.parent}")
