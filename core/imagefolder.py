"""The ImageFolder source: `<root>/<split>/<class>/*.jpg`, labels by sorted class name."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from core.pipeline import CorruptImages, DatasetError, RowSplit, looks_like_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".JPEG", ".JPG", ".PNG")


@dataclass(frozen=True)
class ImageList(RowSplit):
    """Files and integer labels of one split (a core.data.DataSplit); labels index the sorted
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


class ImageFolder:
    """A dataset root of split folders (a core.data.DataSource)."""

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
