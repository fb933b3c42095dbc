"""The packed source: an ImageFolder packed into MindRecord shards (core.data.packing writes them).

    <root>/train-00000.mindrecord, train-00000.mindrecord.db, ..., val-00000.mindrecord, ...
    <root>/index.json   format, classes, and per split: samples and shards (sample range,
                        label runs, and every file's size and sha256); written last, so its
                        presence means the pack is complete

Each row is the original file's bytes, its label and its name relative to the split, in
`scan_split`'s file order: global sample i of a packed split is file i of the folder, so the
same order and augmentations give the same arrays as the folder. Readers use `MindDataset` with
a `SubsetSampler` over that order.
"""
from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from core.data.pipeline import CorruptImages, DatasetError, RowSplit, replacement, usable_workers
from core.digest import sha256_file

INDEX_NAME = "index.json"
FORMAT = "mnv3-packed-mindrecord"
VERSION = 1
VERIFIED_NAME = ".pack-verified.json"
SCHEMA = {"image": {"type": "bytes"}, "label": {"type": "int32"}, "file_name": {"type": "string"}}
MB = 1024 * 1024


def is_packed(root: str | os.PathLike) -> bool:
    """A packed dataset is a folder with a (complete pack's) index.json."""
    return (Path(root) / INDEX_NAME).is_file()


def read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def write_json_atomic(path: str, data, indent=None) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(data, fh, sort_keys=True, indent=indent)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class PackedDataset:
    """A packed dataset root (a core.data.sources.DataSource)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def has_split(self, name: str) -> bool:
        return name in read_index(self.root)["splits"]

    def split(self, name: str, classes: Optional[Sequence[str]] = None) -> "PackedSplit":
        return load_packed_split(self.root, name, classes)

    def verify(self, workers: Optional[int] = None, reuse: bool = False) -> dict:
        return verify_packed(self.root, workers, reuse)


@dataclass(frozen=True)
class PackedSplit(RowSplit):
    """A packed split (a core.data.sources.DataSplit): len(), labels, classes, pipelines.

    `labels` follow `classes`; when those are not the classes the pack was written with
    (a checkpoint's class list), `label_map` turns stored labels into them. `corrupt` maps
    the sample number of each unreadable image (found when packing) to its file name.
    """
    root: str
    split: str
    shards: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    label_map: Optional[np.ndarray] = None
    corrupt: Optional[dict] = None
    shard_samples: tuple[int, ...] = ()  # samples of each shard, in file order

    def __len__(self) -> int:
        return len(self.labels)

    def shard_sizes(self) -> Optional[tuple[int, ...]]:
        """The shards the shard-window shuffle permutes (core.data.pipeline.epoch_order)."""
        return self.shard_samples or None

    def rows(self, indices: np.ndarray, start: int, corrupt: CorruptImages, workers: int):
        """(image bytes, label) of the samples indices[start:]. Unreadable images are known
        from the index, so they are replaced (or fail) up front, as core.data.imagefolder does when
        it meets one."""
        order = readable_order(self, indices, corrupt)[start:]
        import mindspore.dataset as ds
        dataset = ds.MindDataset(list(self.shards), columns_list=["image", "label"],
                                 sampler=ds.SubsetSampler(order.tolist()),
                                 num_parallel_workers=usable_workers(workers))
        if self.label_map is not None:
            lookup = self.label_map
            dataset = dataset.map(operations=lambda label: lookup[label], input_columns="label")
        return dataset

    def sample_names(self, indices: Sequence[int]) -> list[str]:
        """Each sample's file path relative to the split, as the ImageFolder it was packed from
        names it (read from the shards' file_name column, a shard at a time when first needed)."""
        starts = np.cumsum((0,) + tuple(self.shard_samples or (len(self),)))
        indices = np.asarray(indices, np.int64)
        shards = np.searchsorted(starts, indices, side="right") - 1
        names = []
        for shard, index in zip(shards.tolist(), indices.tolist()):
            names.append(shard_names(self.shards[shard])[index - int(starts[shard])])
        return names


@functools.lru_cache(maxsize=4096)
def _names_of(path: str, size: int, mtime_ns: int) -> tuple[str, ...]:
    import mindspore.dataset as ds
    column = ds.MindDataset([path], columns_list=["file_name"], shuffle=False, num_parallel_workers=1)
    return tuple(str(row[0]) for row in column.create_tuple_iterator(num_epochs=1, output_numpy=True))


def shard_names(path: str) -> tuple[str, ...]:
    """The file_name column of one shard, in row order (MindDataset reads it from the shard's
    index file, not the image pages); cached per file version."""
    stat = os.stat(path)
    return _names_of(str(path), stat.st_size, stat.st_mtime_ns)


def read_index(root: str | os.PathLike) -> dict:
    path = Path(root) / INDEX_NAME
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path} not found: {root} is not a packed dataset (or its pack did "
                           f"not finish; run the pack command again)") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path} ({exc}); re-run the pack command") from None
    if index.get("format") != FORMAT or index.get("version") != VERSION:
        raise DatasetError(f"{path} is not a version-{VERSION} {FORMAT} index; re-pack the "
                           f"dataset with this runner")
    problem = index_problem(index)
    if problem:
        raise DatasetError(f"{path} is inconsistent: {problem}; re-pack the dataset (or stage "
                           f"it again if the copy was changed)")
    return index


def index_problem(index: dict) -> Optional[str]:
    """What contradicts itself in an index, or None: each shard's samples against its label
    runs, its first sample against the shards before it, its unreadable-sample numbers against
    its range, labels against the class list, and the split's total against its shards."""
    try:
        classes = index["classes"]
        if not isinstance(classes, list) or not classes:
            return "no class list"
        for split, entry in index["splits"].items():
            total = 0
            for shard in entry["shards"]:
                name, samples, first = shard["name"], shard["samples"], shard["first"]
                runs = shard["label_runs"]
                in_runs = sum(count for _, count in runs)
                if in_runs != samples:
                    return (f"split {split}, shard {name}: {samples} samples but its label runs "
                            f"count {in_runs}")
                if any(count < 1 or not 0 <= label < len(classes) for label, count in runs):
                    return (f"split {split}, shard {name}: a label run names a label outside the "
                            f"{len(classes)} classes or has no samples")
                if first != total:
                    return (f"split {split}, shard {name}: starts at sample {first}, but the shards "
                            f"before it hold {total}")
                if any(not first <= number < first + samples for number, *_ in shard.get("corrupt", ())):
                    return f"split {split}, shard {name}: an unreadable sample lies outside the shard"
                total += samples
            if total != entry["samples"]:
                return f"split {split} lists {entry['samples']} samples but its shards hold {total}"
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return f"a field is missing or malformed ({type(exc).__name__}: {exc})"
    return None


def load_packed_split(root: str | os.PathLike, split: str,
                      classes: Optional[Sequence[str]] = None,
                      require_files: bool = True) -> PackedSplit:
    """A split of a packed dataset. With `classes` (the training classes) the split's
    labels are mapped onto them, and a class outside them is refused, as in scan_split.
    `require_files=False`: the shards need not be there yet (core.data.streamed brings them)."""
    index = read_index(root)
    entry = index["splits"].get(split)
    if entry is None:
        raise DatasetError(f"packed dataset {root} has no split {split!r} (it has "
                           f"{sorted(index['splits'])}); pack a folder that has {split}/")
    stored = tuple(index["classes"])
    labels = np.concatenate([np.repeat(np.int32(label), count)
                             for shard in entry["shards"] for label, count in shard["label_runs"]])
    shards = tuple(str(Path(root) / shard["name"]) for shard in entry["shards"])
    corrupt = {number: f"{Path(root) / shard['name']}:{name}"
               for shard in entry["shards"] for number, name in shard.get("corrupt", ())}
    missing = [p for p in shards if require_files and not os.path.isfile(p)]
    if missing:
        raise DatasetError(f"packed dataset {root} lacks shard {Path(missing[0]).name} "
                           f"({len(missing)} missing); stage or pack it again")
    if len(labels) != entry["samples"]:
        raise DatasetError(f"{Path(root) / INDEX_NAME}: split {split} lists {entry['samples']} "
                           f"samples but its shards hold {len(labels)}; re-pack the dataset")
    sizes = tuple(int(shard["samples"]) for shard in entry["shards"])
    if classes is None or tuple(classes) == stored:
        return PackedSplit(str(root), split, shards, labels, stored, None, corrupt, sizes)
    classes = tuple(classes)
    used = sorted({stored[i] for i in np.unique(labels)})
    extra = sorted(set(used) - set(classes))
    if extra:
        raise DatasetError(f"packed {root}/{split} has class(es) {extra[:5]} that the training "
                           f"set lacks; re-pack without them or train with them")
    lookup = {name: i for i, name in enumerate(classes)}
    label_map = np.array([lookup.get(name, -1) for name in stored], dtype=np.int32)
    return PackedSplit(str(root), split, shards, label_map[labels], classes, label_map, corrupt, sizes)


def readable_order(split: PackedSplit, indices: np.ndarray, corrupt: CorruptImages) -> np.ndarray:
    """`indices` with each unreadable sample replaced as core.data.imagefolder does when it
    meets one: by the next readable sample in file order (core.data.pipeline.replacement),
    each one met reported."""
    bad = np.isin(indices, list(split.corrupt or ()))
    if not bad.any():
        return indices
    order = indices.copy()
    for i in np.flatnonzero(bad):
        for attempt in range(len(split)):
            j = replacement(int(indices[i]), attempt, len(split))
            if j not in split.corrupt:
                order[i] = j
                break
            corrupt.report(split.corrupt[j])
        else:
            raise DatasetError(f"no readable image in packed {split.root}/{split.split}")
    return order


def verify_packed(root: str | os.PathLike, workers: Optional[int] = None,
                  reuse: bool = False) -> dict:
    """Check every shard file against the index (size, then sha256); raise DatasetError
    naming the first bad shard. Call it after staging a packed dataset.

    With `reuse`, a file whose size, mtime, ctime and inode match an earlier successful check
    (recorded in `.pack-verified.json`) is not hashed again: a re-staged cache whose shards the
    sync left untouched verifies in milliseconds instead of re-reading every byte, and bytes
    changed in place are hashed again even when their size and mtime were put back.
    """
    from concurrent.futures import ThreadPoolExecutor
    index = read_index(root)
    files = [(shard["name"], f) for split in index["splits"].values()
             for shard in split["shards"] for f in shard["files"]]
    record_path = Path(root) / VERIFIED_NAME
    known = (read_json(str(record_path)) or {}) if reuse else {}
    verified: dict[str, list] = {}

    def check(item) -> Optional[str]:
        shard, expected = item
        path = Path(root) / expected["name"]
        if not path.is_file():
            return f"shard {shard}: {expected['name']} is missing"
        stat = path.stat()
        if stat.st_size != expected["size"]:
            return (f"shard {shard}: {expected['name']} has {stat.st_size} bytes, the index "
                    f"says {expected['size']}")
        # ctime and inode too: a write (or a replaced file) that restored size and mtime
        # (os.utime) still moves the ctime, which no caller can set back
        seen = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, expected["sha256"]]
        if known.get(expected["name"]) != seen:
            if sha256_file(path) != expected["sha256"]:
                return f"shard {shard}: {expected['name']} fails its sha256 check (content differs)"
        verified[expected["name"]] = seen
        return None

    started = time.monotonic()
    # hashlib releases the GIL on large blocks, so threads hash in parallel.
    with ThreadPoolExecutor(max(1, workers or os.cpu_count() or 1)) as pool:
        problems = [p for p in pool.map(check, files) if p]
    if problems:
        more = f" ({len(problems)} bad files)" if len(problems) > 1 else ""
        raise DatasetError(f"packed dataset {root}: {problems[0]}{more}; stage it again (or, if "
                           f"the stored copy is damaged, pack it again)")
    if reuse:
        write_json_atomic(str(record_path), verified)
    total = sum(f["size"] for _, f in files)
    return {"files": len(files), "bytes": total, "seconds": round(time.monotonic() - started, 3)}
