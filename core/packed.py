"""Packed datasets: an ImageFolder as MindRecord shards, written once and read like the folder.

At ImageNet scale a folder of 1.28 million JPEGs costs as many requests to stage from object
storage. Packing turns each split into a few hundred MindRecord shards of about
`shard_size_mb` (MindSpore's own `FileWriter`) that stage at bandwidth:

    <dst>/train-00000.mindrecord, train-00000.mindrecord.db, ..., val-00000.mindrecord, ...
    <dst>/index.json    format, classes, and per split: samples and shards (sample range,
                        label runs, and every file's size and sha256); written last, so its
                        presence means the pack is complete

Each row is the original file's bytes (no re-encode), its label and its name relative to the
split. Rows keep `scan_split`'s file order, so global sample i of a packed split is file i of
the folder: `train_order` picks the same samples, and the same augmentation ops on the same
bytes give the same arrays. Readers use `MindDataset` with a `SubsetSampler` over that order.

Packing runs one process per CPU, each writing whole shards. It is resumable: a shard counts
as written only when its files and its done-marker (`.pack-state/<shard>.json`, holding the
index entry) exist; anything else under a shard's name is removed and written again. The
output is deterministic: same input, same shard bytes and the same index (no timestamps).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from core.data import (CorruptImages, DatasetError, ImageList, augmentation_seed, eval_order,
                       eval_transforms, looks_like_image, native_augmentation, native_train_pipeline,
                       scan_split, train_order, train_transforms, usable_workers)

log = logging.getLogger("core.packed")

INDEX_NAME = "index.json"
FORMAT = "mnv3-packed-mindrecord"
VERSION = 1
STATE_DIR = ".pack-state"
VERIFIED_NAME = ".pack-verified.json"
SCHEMA = {"image": {"type": "bytes"}, "label": {"type": "int32"}, "file_name": {"type": "string"}}
MB = 1024 * 1024
_BATCH_BYTES = 64 * MB          # rows handed to FileWriter at once
_MIN_PAGE, _MAX_PAGE = 32 * 1024, 256 * MB
_MIN_HEADER, _MAX_HEADER = 16 * 1024, 128 * MB


def is_packed(root: str | os.PathLike) -> bool:
    """A packed dataset is a folder with a (complete pack's) index.json."""
    return (Path(root) / INDEX_NAME).is_file()


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class ShardPlan:
    """One shard to write: consecutive samples of one split, in scan_split order."""
    split: str
    number: int
    first: int                                    # global index of its first sample
    items: tuple[tuple[str, str, int, int], ...]  # (path, name in split, label, size)
    page_size: int                                # MindRecord layout, the same for every
    header_size: int                              # shard (MindDataset refuses a mix)

    @property
    def name(self) -> str:
        return f"{self.split}-{self.number:05d}.mindrecord"

    @property
    def payload(self) -> int:
        return sum(item[3] for item in self.items)

    def label_runs(self) -> list[list[int]]:
        runs: list[list[int]] = []
        for _, _, label, _ in self.items:
            if runs and runs[-1][0] == label:
                runs[-1][1] += 1
            else:
                runs.append([label, 1])
        return runs

    def fingerprint(self) -> str:
        """What the shard holds and how it is laid out; a marker for another plan is stale."""
        text = json.dumps([VERSION, self.name, self.first, self.page_size, self.header_size,
                           [item[1:] for item in self.items]], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def _pow2_between(value: int, low: int, high: int) -> int:
    return min(high, max(low, 1 << max(0, int(value) - 1).bit_length()))


def layout(shard_bytes: int, largest_file: int) -> tuple[int, int]:
    """(page size, header size) for shards of about `shard_bytes`.

    MindRecord pads each blob page to the page size (the last one of a shard included) and a
    row must fit in one page: pages of ~1/8 shard, at most 4 MB unless the largest file needs
    more, keep the padding near 1-2% (one outlier must not inflate every shard's last page).
    The header holds the page table (~250 bytes a page).
    """
    page = _pow2_between(max(largest_file + 4096, min(4 * MB, shard_bytes // 8)),
                         _MIN_PAGE, _MAX_PAGE)
    pages = (shard_bytes + largest_file) // page + 4
    return page, _pow2_between(2 * (8192 + 256 * pages), _MIN_HEADER, _MAX_HEADER)


def plan_split(images: ImageList, split: str, shard_bytes: int, sizes: Sequence[int],
               page_size: int, header_size: int) -> list[ShardPlan]:
    """Cut the split's files (of `sizes` bytes), in order, into shards of about
    `shard_bytes` of payload."""
    shards, items, first, total = [], [], 0, 0
    for path, label, size in zip(images.files, images.labels, sizes):
        if items and total + size > shard_bytes:
            shards.append(ShardPlan(split, len(shards), first, tuple(items), page_size, header_size))
            first += len(items)
            items, total = [], 0
        items.append((path, os.path.relpath(path, images.root).replace(os.sep, "/"), label, size))
        total += size
    if items:
        shards.append(ShardPlan(split, len(shards), first, tuple(items), page_size, header_size))
    return shards


# --------------------------------------------------------------------------- writing one shard


def _file_digest(path: str) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 * MB):
            digest.update(block)
        os.fsync(fh.fileno())
    return {"name": os.path.basename(path), "size": os.path.getsize(path),
            "sha256": digest.hexdigest()}


def _shard_paths(dst: str, name: str) -> list[str]:
    """Every file under a shard's name: MindRecord's data and .db, and leftovers
    (an sqlite journal) of an interrupted write."""
    return [os.path.join(dst, f) for f in os.listdir(dst) if f == name or f.startswith(name + ".")]


def write_shard(dst: str, plan: ShardPlan) -> dict:
    """Write one shard from scratch, then its done-marker; returns its index entry.
    Runs in a worker process."""
    from mindspore.mindrecord import FileWriter
    for leftover in _shard_paths(dst, plan.name):
        os.remove(leftover)
    path = os.path.join(dst, plan.name)
    writer = FileWriter(path, shard_num=1, overwrite=True)
    writer.set_header_size(plan.header_size)
    writer.set_page_size(plan.page_size)
    writer.add_schema(SCHEMA, "mnv3 packed images")
    rows, pending, corrupt = [], 0, []
    for number, (source, name, label, _) in enumerate(plan.items, plan.first):
        try:
            with open(source, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise DatasetError(f"cannot read {source} while packing {plan.name}: {exc}") from None
        if not looks_like_image(data):
            corrupt.append([number, name])  # kept, so numbering stays scan_split's
            data = data or b"\0"  # MindRecord cannot hold an empty blob; never read anyway
        rows.append({"image": data, "label": label, "file_name": name})
        pending += len(data)
        if pending >= _BATCH_BYTES:
            writer.write_raw_data(rows)
            rows, pending = [], 0
    if rows:
        writer.write_raw_data(rows)
    writer.commit()
    entry = {"name": plan.name, "first": plan.first, "samples": len(plan.items),
             "label_runs": plan.label_runs(), "corrupt": corrupt, "fingerprint": plan.fingerprint(),
             "files": [_file_digest(path), _file_digest(path + ".db")]}
    _write_json_atomic(_marker_path(dst, plan.name), entry)
    return entry


def _marker_path(dst: str, name: str) -> str:
    return os.path.join(dst, STATE_DIR, name + ".json")


def _write_json_atomic(path: str, data, indent=None) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(data, fh, sort_keys=True, indent=indent)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------- resuming


def _entry_is_complete(dst: str, entry: Optional[dict], plan: ShardPlan) -> bool:
    """The entry is for this plan and every file it lists is there, at its size."""
    if not entry or entry.get("fingerprint") != plan.fingerprint():
        return False
    for f in entry.get("files", ()):
        path = os.path.join(dst, f["name"])
        if not os.path.isfile(path) or os.path.getsize(path) != f["size"]:
            return False
    return True


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _adopt_finished_index(dst: str) -> None:
    """Turn a previous pack's index into done-markers, then remove it: from here until the
    new index is written the folder is not a complete pack."""
    old = _read_json(os.path.join(dst, INDEX_NAME))
    if old is None:
        return
    for split in old.get("splits", {}).values():
        for entry in split.get("shards", ()):
            marker = _marker_path(dst, entry["name"])
            if not os.path.exists(marker):
                _write_json_atomic(marker, entry)
    os.remove(os.path.join(dst, INDEX_NAME))


def _remove_foreign_shards(dst: str, splits: Sequence[str], keep: set[str]) -> None:
    """Shards of an earlier plan (say, a smaller shard size) that this plan does not write."""
    pattern = re.compile(rf"^({'|'.join(map(re.escape, splits))})-\d{{5}}\.mindrecord")
    for name in os.listdir(dst):
        match = pattern.match(name)
        if match and match.group(0) not in keep:
            os.remove(os.path.join(dst, name))
    state = os.path.join(dst, STATE_DIR)
    for name in os.listdir(state):
        if name.endswith(".json") and name[:-5] not in keep:
            os.remove(os.path.join(state, name))


# --------------------------------------------------------------------------- packing


def scan_source(src_dir: str | os.PathLike, splits: Sequence[str] = ("train", "val")) -> dict:
    """{split: ImageList}; the first split names the classes, later ones must use them."""
    src = Path(src_dir)
    found: dict[str, ImageList] = {}
    for split in splits:
        if not (src / split).is_dir():
            if not found:
                raise DatasetError(f"{src / split} not found: pack expects an ImageFolder root "
                                   f"with {'/ and '.join(splits)}/ (<root>/<split>/<class>/*.jpg)")
            log.warning("no %s/ in %s: packing without it", split, src)
            continue
        first = next(iter(found.values()), None)
        found[split] = scan_split(src / split, first.classes if first else None)
    return found


def pack_imagefolder(src_dir: str | os.PathLike, dst_dir: str | os.PathLike,
                     shard_size_mb: float = 256, workers: Optional[int] = None,
                     splits: Sequence[str] = ("train", "val"),
                     progress: Optional[Callable[[int, int, dict], None]] = None) -> dict:
    """Pack `src_dir/<split>/` into MindRecord shards in `dst_dir`; returns the index.

    Re-running after an interruption writes only the shards not yet done; re-running over a
    finished pack with the same input rewrites nothing. `progress(done, total, entry)` runs
    in this process after each shard written.
    """
    if shard_size_mb <= 0:
        raise DatasetError(f"shard size {shard_size_mb} MB: expected a positive number")
    dst = os.path.abspath(dst_dir)
    if os.path.abspath(src_dir) == dst:
        raise DatasetError(f"pack destination {dst} is the source folder; choose another folder")
    sources = scan_source(src_dir, splits)
    classes = next(iter(sources.values())).classes
    sizes = {split: [os.path.getsize(path) for path in images.files]
             for split, images in sources.items()}
    shard_bytes = int(shard_size_mb * MB)
    largest = max(max(s) for s in sizes.values())
    if largest > _MAX_PAGE - 4096:
        path = next(p for split, images in sources.items()
                    for p, size in zip(images.files, sizes[split]) if size == largest)
        raise DatasetError(f"{path} is {largest / MB:.0f} MB; a MindRecord row holds at most "
                           f"{_MAX_PAGE // MB - 1} MB: shrink or remove that file")
    page, header = layout(shard_bytes, largest)
    plans = [plan for split, images in sources.items()
             for plan in plan_split(images, split, shard_bytes, sizes[split], page, header)]

    os.makedirs(os.path.join(dst, STATE_DIR), exist_ok=True)
    _adopt_finished_index(dst)
    _remove_foreign_shards(dst, list(sources), {plan.name for plan in plans})
    entries = {plan.name: _read_json(_marker_path(dst, plan.name)) for plan in plans}
    todo = [plan for plan in plans if not _entry_is_complete(dst, entries[plan.name], plan)]
    log.info("packing %s -> %s: %d shards (%d already written), %d samples, %.1f MB",
             src_dir, dst, len(plans), len(plans) - len(todo),
             sum(len(p.items) for p in plans), sum(p.payload for p in plans) / MB)

    started, done = time.monotonic(), len(plans) - len(todo)
    for entry in _write_all(dst, todo, workers):
        entries[entry["name"]] = entry
        done += 1
        log.info("shard %s written (%d/%d, %.0f s)", entry["name"], done, len(plans),
                 time.monotonic() - started)
        if progress:
            progress(done, len(plans), entry)

    index = {"format": FORMAT, "version": VERSION, "classes": list(classes), "schema": SCHEMA,
             "splits": {split: {"samples": len(images),
                                "shards": [entries[p.name] for p in plans if p.split == split]}
                        for split, images in sources.items()}}
    _write_json_atomic(os.path.join(dst, INDEX_NAME), index, indent=1)
    shutil.rmtree(os.path.join(dst, STATE_DIR), ignore_errors=True)
    return index


def _write_all(dst: str, todo: list[ShardPlan], workers: Optional[int]):
    """Yield each shard's entry as it is written: inline for one worker, else one spawned
    process per worker (spawn, not fork: the parent may hold MindSpore's threads)."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    if workers == 1:
        for plan in todo:
            yield write_shard(dst, plan)
        return
    # Largest shards first so the last ones to finish are short.
    queue = sorted(todo, key=lambda p: -p.payload)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                             initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
        running = {pool.submit(write_shard, dst, plan) for plan in queue}
        try:
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
        except BrokenProcessPool:
            raise DatasetError(f"a pack worker process died (out of memory?) while packing into "
                               f"{dst}; run the pack again to resume, with fewer workers") from None
        except BaseException:
            for future in running:
                future.cancel()
            raise


def _exit_with_parent(parent: int) -> None:
    """Pool workers of a killed pack would wait for work forever: leave when it is gone."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class PackedSplit:
    """A packed split, used where an ImageList is: len(), labels, classes.

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

    def __len__(self) -> int:
        return len(self.labels)

    def file_names(self) -> list[str]:
        """Each sample's file name relative to its split folder, in sample order."""
        import mindspore.dataset as ds
        rows = ds.MindDataset(list(self.shards), columns_list=["file_name"], shuffle=False)
        return [str(name) for (name,) in rows.create_tuple_iterator(num_epochs=1, output_numpy=True)]


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
    return index


def load_packed_split(root: str | os.PathLike, split: str,
                      classes: Optional[Sequence[str]] = None) -> PackedSplit:
    """A split of a packed dataset. With `classes` (the training classes) the split's
    labels are mapped onto them, and a class outside them is refused, as in scan_split."""
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
    missing = [p for p in shards if not os.path.isfile(p)]
    if missing:
        raise DatasetError(f"packed dataset {root} lacks shard {Path(missing[0]).name} "
                           f"({len(missing)} missing); stage or pack it again")
    if len(labels) != entry["samples"]:
        raise DatasetError(f"{Path(root) / INDEX_NAME}: split {split} lists {entry['samples']} "
                           f"samples but its shards hold {len(labels)}; re-pack the dataset")
    if classes is None or tuple(classes) == stored:
        return PackedSplit(str(root), split, shards, labels, stored, None, corrupt)
    classes = tuple(classes)
    used = sorted({stored[i] for i in np.unique(labels)})
    extra = sorted(set(used) - set(classes))
    if extra:
        raise DatasetError(f"packed {root}/{split} has class(es) {extra[:5]} that the training "
                           f"set lacks; re-pack without them or train with them")
    lookup = {name: i for i, name in enumerate(classes)}
    label_map = np.array([lookup.get(name, -1) for name in stored], dtype=np.int32)
    return PackedSplit(str(root), split, shards, label_map[labels], classes, label_map, corrupt)


def split_for(root: str | os.PathLike, split_dir: str, classes: Optional[Sequence[str]] = None):
    """The split `split_dir` of a dataset root, packed or ImageFolder: what load_splits and
    eval call instead of scan_split(root / split_dir, classes)."""
    if is_packed(root):
        return load_packed_split(root, split_dir, classes)
    return scan_split(Path(root) / split_dir, classes)


def has_split(root: str | os.PathLike, split_dir: str) -> bool:
    if is_packed(root):
        return split_dir in read_index(root)["splits"]
    return (Path(root) / split_dir).exists()


def readable_order(split: PackedSplit, indices: np.ndarray, corrupt: CorruptImages) -> np.ndarray:
    """`indices` with each unreadable sample replaced as core.data._FileSource does when it
    meets one: by the next readable sample of the same order (cyclic), each one met reported."""
    bad = np.isin(indices, list(split.corrupt or ()))
    if not bad.any():
        return indices
    order = indices.copy()
    for i in np.flatnonzero(bad):
        for attempt in range(len(indices)):
            j = int(indices[(i + attempt) % len(indices)])
            if j not in split.corrupt:
                order[i] = j
                break
            corrupt.report(split.corrupt[j])
        else:
            raise DatasetError(f"no readable image in this shard of packed {split.root}/{split.split}")
    return order


def _packed_rows(split: PackedSplit, indices: np.ndarray, workers: int):
    """(image bytes, label) rows of a packed split in `indices` order."""
    import mindspore.dataset as ds
    dataset = ds.MindDataset(list(split.shards), columns_list=["image", "label"],
                             sampler=ds.SubsetSampler(indices.tolist()),
                             num_parallel_workers=usable_workers(workers))
    if split.label_map is not None:
        lookup = split.label_map
        dataset = dataset.map(operations=lambda label: lookup[label], input_columns="label")
    return dataset


def _packed_pipeline(split: PackedSplit, indices: np.ndarray, ops: list, batch_size: int,
                     workers: int, drop_remainder: bool, corrupt: CorruptImages):
    """core.data._pipeline over shards: rows in `indices` order, then the same map and batch.
    Unreadable images are known from the index, so they are replaced (or fail) up front."""
    dataset = _packed_rows(split, readable_order(split, indices, corrupt), workers)
    dataset = dataset.map(operations=ops, input_columns="image",
                          num_parallel_workers=usable_workers(workers))
    return dataset.batch(batch_size, drop_remainder=drop_remainder)


def build_packed_train_dataset(split: PackedSplit, data_cfg, seed: int, epoch: int, rank: int = 0,
                               world: int = 1, skip_batches: int = 0,
                               corrupt: Optional[CorruptImages] = None):
    """build_train_dataset for a packed split: same order, same augmentation stream, same
    replacement of unreadable images."""
    import mindspore.dataset as ds
    corrupt = corrupt or CorruptImages()
    indices = train_order(len(split), seed, epoch, rank, world)
    if native_augmentation(data_cfg):
        from core.jpeg_augment import draw_params
        start = skip_batches * data_cfg.batch_size
        order = readable_order(split, indices, corrupt)[start:]
        params = draw_params(len(indices), seed, epoch, rank, start)
        return native_train_pipeline(_packed_rows(split, order, data_cfg.workers), params,
                                     data_cfg, data_cfg.workers)
    ds.config.set_seed(augmentation_seed(seed, epoch, rank))
    dataset = _packed_pipeline(split, indices, train_transforms(data_cfg), data_cfg.batch_size,
                               data_cfg.workers, True, corrupt)
    if skip_batches:
        dataset = dataset.skip(skip_batches)
    return dataset


def build_packed_eval_dataset(split: PackedSplit, data_cfg, rank: int = 0, world: int = 1,
                              corrupt: Optional[CorruptImages] = None):
    """build_eval_dataset for a packed split: every sample of this rank's shard once; an
    unreadable image fails it."""
    batch = data_cfg.eval_batch_size or data_cfg.batch_size
    return _packed_pipeline(split, eval_order(len(split), rank, world), eval_transforms(data_cfg),
                            batch, data_cfg.workers, False, corrupt or CorruptImages(fail_fast=True))


# --------------------------------------------------------------------------- verifying


def verify_packed(root: str | os.PathLike, workers: Optional[int] = None,
                  reuse: bool = False) -> dict:
    """Check every shard file against the index (size, then sha256); raise DatasetError
    naming the first bad shard. Call it after staging a packed dataset.

    With `reuse`, a file whose size and mtime match an earlier successful check (recorded in
    `.pack-verified.json`) is not hashed again: a re-staged cache whose shards the sync left
    untouched verifies in milliseconds instead of re-reading every byte.
    """
    from concurrent.futures import ThreadPoolExecutor
    index = read_index(root)
    files = [(shard["name"], f) for split in index["splits"].values()
             for shard in split["shards"] for f in shard["files"]]
    record_path = Path(root) / VERIFIED_NAME
    known = (_read_json(str(record_path)) or {}) if reuse else {}
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
        seen = [stat.st_size, stat.st_mtime_ns, expected["sha256"]]
        if known.get(expected["name"]) != seen:
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                while block := fh.read(8 * MB):
                    digest.update(block)
            if digest.hexdigest() != expected["sha256"]:
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
        _write_json_atomic(str(record_path), verified)
    total = sum(f["size"] for _, f in files)
    return {"files": len(files), "bytes": total, "seconds": round(time.monotonic() - started, 3)}
