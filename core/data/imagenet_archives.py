"""ImageNet (ILSVRC2012) images read straight from the files users download: no unpacking.

Official form (image-net.org), in one folder:
    ILSVRC2012_img_train.tar        a tar of 1,000 per-class tars (n01440764.tar holding
                                    n01440764_*.JPEG), read as one stream, inner tars streamed too
    ILSVRC2012_img_val.tar          50,000 flat ILSVRC2012_val_<n>.JPEG, labelled by the devkit
    ILSVRC2012_devkit_t12.tar.gz    classes and val ground truth (core.data.imagenet_devkit)
Kaggle form: LOC_synset_mapping.txt, LOC_val_solution.csv, ILSVRC/Data/CLS-LOC/{train/<wnid>,val}/.

A split is an iterator of (label, name in split, bytes) records in archive order, one image in
memory at a time, named as in the ImageFolder layout (`<wnid>/<file>`). Where the files live is
the caller's business (`SourceFiles`: a local folder here, object storage in cloud/): core
only needs a readable binary stream per name.
"""
from __future__ import annotations

import os
import tarfile
from pathlib import PurePosixPath
from typing import BinaryIO, Callable, Iterator, Optional, Protocol

from core.data.imagenet_devkit import ImageNetMeta, read_devkit, read_kaggle
from core.data.pipeline import DatasetError

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
KAGGLE_MAPPING = "LOC_synset_mapping.txt"
KAGGLE_SOLUTION = "LOC_val_solution.csv"
KAGGLE_DATA = "ILSVRC/Data/CLS-LOC"
EXPECTED = (f"{TRAIN_TAR}, {VAL_TAR} and {DEVKIT} as downloaded from image-net.org (or "
            f"Kaggle's {KAGGLE_MAPPING}, {KAGGLE_SOLUTION} and {KAGGLE_DATA}/)")

Record = tuple[int, str, bytes]


class SourceFiles(Protocol):
    """Read access to the source folder; names are relative to it."""

    def size(self, name: str) -> Optional[int]: ...          # None: no such file
    def open(self, name: str) -> BinaryIO: ...               # a readable stream
    def list(self, prefix: str) -> Iterator[str]: ...        # file names under prefix/
    def describe(self, name: str = "") -> str: ...


class LocalFiles:
    """A local folder as SourceFiles."""

    def __init__(self, root: str | os.PathLike):
        self.root = os.path.abspath(root)

    def size(self, name: str) -> Optional[int]:
        path = os.path.join(self.root, name)
        return os.path.getsize(path) if os.path.isfile(path) else None

    def open(self, name: str) -> BinaryIO:
        return open(os.path.join(self.root, name), "rb", buffering=1 << 20)

    def list(self, prefix: str) -> Iterator[str]:
        top = os.path.join(self.root, prefix)
        for folder, _, files in os.walk(top):
            for f in files:
                yield os.path.relpath(os.path.join(folder, f), self.root).replace(os.sep, "/")

    def describe(self, name: str = "") -> str:
        return os.path.join(self.root, name) if name else self.root


class Counted:
    """A stream that counts the bytes read through it (progress, and how far a truncated
    archive got)."""

    def __init__(self, raw: BinaryIO, on_bytes: Optional[Callable[[int], None]] = None):
        self.raw, self.on_bytes, self.count = raw, on_bytes, 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        if self.on_bytes and data:
            self.on_bytes(len(data))
        return data

    def close(self) -> None:
        self.raw.close()


class ImageNetSource:
    """The two splits of an ImageNet source folder, as record iterators."""

    def __init__(self, files: SourceFiles, on_bytes: Optional[Callable[[int], None]] = None):
        self.files, self.on_bytes = files, on_bytes
        self.kaggle = files.size(KAGGLE_MAPPING) is not None and files.size(TRAIN_TAR) is None
        needed = ((KAGGLE_MAPPING, KAGGLE_SOLUTION) if self.kaggle else (TRAIN_TAR, VAL_TAR, DEVKIT))
        self.sizes = {name: files.size(name) for name in needed}
        for name, size in self.sizes.items():
            if size is None:
                raise DatasetError(f"{files.describe(name)} not found: --imagenet expects a "
                                   f"folder holding {EXPECTED}")
        self.meta = self._read_meta()

    def _read_meta(self) -> ImageNetMeta:
        if self.kaggle:
            read = {name: self._open(name).read() for name in (KAGGLE_MAPPING, KAGGLE_SOLUTION)}
            return read_kaggle(read[KAGGLE_MAPPING], read[KAGGLE_SOLUTION], self.files.describe())
        with self._open(DEVKIT) as stream:
            return read_devkit(stream, self.files.describe(DEVKIT))

    def _open(self, name: str) -> BinaryIO:
        return self.files.open(name)

    @property
    def total_bytes(self) -> Optional[int]:
        """Bytes the splits read (None for Kaggle's many files)."""
        return None if self.kaggle else self.sizes[TRAIN_TAR] + self.sizes[VAL_TAR]

    def splits(self) -> dict[str, Callable[[], Iterator[Record]]]:
        if self.kaggle:
            return {"train": self._kaggle_train, "val": self._kaggle_val}
        return {"train": self._train, "val": self._val}

    # --- official archives

    def _tar(self, name: str, read: Callable[[tarfile.TarFile], Iterator[Record]]) -> Iterator[Record]:
        """Stream archive `name` through `read`; a truncated or damaged one is one error
        that says how far it got."""
        stream, images = Counted(self._open(name), self.on_bytes), 0
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for record in read(tar):
                    images += 1
                    yield record
        except (tarfile.TarError, EOFError) as exc:
            raise DatasetError(f"{self.files.describe(name)} ends early or is damaged ({exc}) "
                               f"after {images} images, {stream.count / 2 ** 20:.1f} of "
                               f"{self.sizes[name] / 2 ** 20:.1f} MB read: download it again, "
                               f"then rerun (finished shards are kept)") from None
        finally:
            stream.close()

    def _train(self) -> Iterator[Record]:
        seen: set[str] = set()

        def read(outer: tarfile.TarFile) -> Iterator[Record]:
            for member in outer:
                if not member.isfile():
                    continue
                wnid = PurePosixPath(member.name).name.removesuffix(".tar")
                if wnid not in self.meta.label_of or not member.name.endswith(".tar"):
                    raise DatasetError(f"{self.files.describe(TRAIN_TAR)} holds {member.name}, not "
                                       f"a class tar <wnid>.tar of the devkit: not the official archive")
                seen.add(wnid)
                label = self.meta.label_of[wnid]
                with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as inner:
                    for image in inner:
                        if image.isfile():
                            data = inner.extractfile(image).read()
                            yield label, f"{wnid}/{PurePosixPath(image.name).name}", data

        yield from self._tar(TRAIN_TAR, read)
        missing = sorted(set(self.meta.wnids) - seen)
        if missing:
            raise DatasetError(f"{self.files.describe(TRAIN_TAR)} holds {len(seen)} of the "
                               f"{len(self.meta.wnids)} class tars (no {missing[0]}.tar): it is "
                               f"truncated; download it again, then rerun (finished shards are kept)")

    def _val(self) -> Iterator[Record]:
        count = 0

        def read(tar: tarfile.TarFile) -> Iterator[Record]:
            nonlocal count
            for member in tar:
                if member.isfile():
                    name = PurePosixPath(member.name).name
                    label = self.meta.val_label(name, self.files.describe(VAL_TAR))
                    count += 1
                    yield label, f"{self.meta.wnids[label]}/{name}", tar.extractfile(member).read()

        yield from self._tar(VAL_TAR, read)
        self._check_val_count(count, self.files.describe(VAL_TAR))

    def _check_val_count(self, count: int, where: str) -> None:
        if count != len(self.meta.val_labels):
            raise DatasetError(f"the ground truth labels {len(self.meta.val_labels)} val images but "
                               f"{where} holds {count}: download the val archive (or the devkit) again")

    # --- Kaggle folders

    def _kaggle_train(self) -> Iterator[Record]:
        top = f"{KAGGLE_DATA}/train"
        for name in sorted(self.files.list(top)):
            wnid, _, file = name[len(top) + 1:].partition("/")
            if wnid not in self.meta.label_of or "/" in file:
                raise DatasetError(f"{self.files.describe(name)} is not <wnid>/<image> of a class "
                                   f"in {KAGGLE_MAPPING}; remove it or fix the mapping")
            with self._open(name) as fh:
                yield self.meta.label_of[wnid], f"{wnid}/{file}", fh.read()

    def _kaggle_val(self) -> Iterator[Record]:
        top, count = f"{KAGGLE_DATA}/val", 0
        for name in sorted(self.files.list(top)):
            file = PurePosixPath(name).name
            label = self.meta.val_label(file, self.files.describe(KAGGLE_SOLUTION))
            count += 1
            with self._open(name) as fh:
                yield label, f"{self.meta.wnids[label]}/{file}", fh.read()
        self._check_val_count(count, self.files.describe(top))
