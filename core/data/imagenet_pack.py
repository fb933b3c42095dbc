"""`pack --imagenet`: the official ImageNet files (or Kaggle's) to packed shards or an ImageFolder.

The archives are read once as streams (core.data.imagenet_archives) and written either as the
MindRecord shards `pack` always writes (core.data.stream_packing, resumable per shard) or, with
layout "imagefolder", as the classic `<dst>/{train,val}/<wnid>/<file>` folders (resumable per
file: a file already there at its size is kept). Val comes first: it is 20 times smaller than
train, so a devkit that does not match the val archive fails in minutes, not hours.
"""
from __future__ import annotations

import os
from typing import Callable, Iterator, Optional

from core.data.imagenet_archives import ImageNetSource, Record, SourceFiles
from core.data.pipeline import DatasetError
from core.progress import Progress
from core.data.stream_packing import pack_records

LAYOUTS = ("packed", "imagefolder")


class _Counter:
    """Images and bytes read so far, drawn as a progress bar (images, MB/s, ETA)."""

    def __init__(self):
        self.images, self.bar = 0, None

    def start(self, total: Optional[int]) -> None:
        self.bar = Progress(total or 0, "pack ImageNet", unit="B")

    def on_bytes(self, amount: int) -> None:
        if self.bar is not None:
            self.bar.add(amount, f"{self.images} images")

    def counted(self, records: Callable[[], Iterator[Record]]) -> Callable[[], Iterator[Record]]:
        def run() -> Iterator[Record]:
            for record in records():
                self.images += 1
                if self.bar.total == 0:  # no archive sizes (Kaggle's files): count bytes here
                    self.on_bytes(len(record[2]))
                yield record
        return run


def pack_imagenet(files: SourceFiles, dst_dir: str | os.PathLike, layout: str = "packed",
                  shard_size_mb: float = 256, max_image_mb: float = 16,
                  workers: Optional[int] = None) -> dict:
    """Pack (or extract) an ImageNet source folder; returns a summary: the index (packed) or
    {split: images} (imagefolder), with the damaged images found."""
    if layout not in LAYOUTS:
        raise DatasetError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    counter = _Counter()
    source = ImageNetSource(files, counter.on_bytes)
    splits = {name: counter.counted(read) for name, read in
              sorted(source.splits().items(), key=lambda kv: kv[0] != "val")}
    meta = source.meta
    counter.start(source.total_bytes)
    try:
        if layout == "imagefolder":
            return extract_imagefolder(splits, dst_dir)
        index = pack_records(dst_dir, splits, meta.wnids, shard_size_mb, max_image_mb, workers,
                             index_extra={"class_words": list(meta.words)})
    finally:
        counter.bar.close(f"{counter.images} images")
    # the index lists train first, as `pack` of a folder does
    index["splits"] = {s: index["splits"][s] for s in ("train", "val") if s in index["splits"]}
    return index


def extract_imagefolder(splits: dict[str, Callable[[], Iterator[Record]]],
                        dst_dir: str | os.PathLike) -> dict:
    """Write records as `<dst>/<split>/<wnid>/<file>`; files already there at their size are
    kept (a rerun resumes), each new one lands whole (written aside, then renamed)."""
    from core.data.pipeline import looks_like_image
    summary: dict = {"splits": {}, "damaged": []}
    for split, records in splits.items():
        count, made = 0, set()
        for _, name, data in records():
            path = os.path.join(dst_dir, split, *name.split("/"))
            folder = os.path.dirname(path)
            if folder not in made:
                os.makedirs(folder, exist_ok=True)
                made.add(folder)
            if not looks_like_image(data):
                summary["damaged"].append(f"{split}/{name}")
            count += 1
            if os.path.isfile(path) and os.path.getsize(path) == len(data):
                continue
            with open(path + ".part", "wb") as fh:
                fh.write(data)
            os.replace(path + ".part", path)
        summary["splits"][split] = count
    return summary


def damaged_images(index: dict) -> list[str]:
    """`<split>/<name>` of every image a pack found unreadable (kept out of training)."""
    return [f"{split}/{name}" for split, entry in index["splits"].items()
            for shard in entry["shards"] for _, name in shard.get("corrupt", ())]
