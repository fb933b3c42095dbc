"""Packing: an ImageFolder written once as MindRecord shards (core.data.packed reads them back).

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
bytes give the same arrays.

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
from typing import Callable, Iterator, Optional, Sequence

from core.data.imagefolder import ImageList, scan_split
from core.data.packed import FORMAT, INDEX_NAME, MB, SCHEMA, VERSION, read_json, write_json_atomic
from core.digest import sha256_file
from core.data.image_formats import image_problem
from core.data.pipeline import DatasetError

log = logging.getLogger("core.data.packing")

STATE_DIR = ".pack-state"
_BATCH_BYTES = 64 * MB          # rows handed to FileWriter at once
_MIN_PAGE, _MAX_PAGE = 32 * 1024, 256 * MB
_MIN_HEADER, _MAX_HEADER = 16 * 1024, 128 * MB


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
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
    return {"name": os.path.basename(path), "size": os.path.getsize(path),
            "sha256": sha256_file(path)}


def _shard_paths(dst: str, name: str) -> list[str]:
    """Every file under a shard's name: MindRecord's data and .db, and leftovers
    (an sqlite journal) of an interrupted write."""
    return [os.path.join(dst, f) for f in os.listdir(dst) if f == name or f.startswith(name + ".")]


def write_shard(dst: str, plan: ShardPlan, blobs: Optional[Iterator[bytes]] = None,
                max_pixels: Optional[int] = None) -> dict:
    """Write one shard from scratch, then its done-marker; returns its index entry.
    Runs in a worker process. `blobs` yields the items' bytes in order when they come from
    somewhere other than the items' paths (an archive: core.data.stream_packing). Images over
    `max_pixels` (data.max_image_pixels) are kept out like unreadable ones, and listed with
    their size under `too_large`."""
    from mindspore.mindrecord import FileWriter
    for leftover in _shard_paths(dst, plan.name):
        os.remove(leftover)
    path = os.path.join(dst, plan.name)
    writer = FileWriter(path, shard_num=1, overwrite=True)
    writer.set_header_size(plan.header_size)
    writer.set_page_size(plan.page_size)
    writer.add_schema(SCHEMA, "mnv3 packed images")
    rows, pending, corrupt, too_large = [], 0, [], []
    for number, (source, name, label, _) in enumerate(plan.items, plan.first):
        try:
            if blobs is not None:
                data = next(blobs)
            else:
                with open(source, "rb") as fh:
                    data = fh.read()
        except OSError as exc:
            raise DatasetError(f"cannot read {source} while packing {plan.name}: {exc}") from None
        problem = image_problem(data, max_pixels)
        if problem is not None:
            corrupt.append([number, name])  # kept, so numbering stays scan_split's
            if problem.startswith("too large"):
                too_large.append([number, name, problem])
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
    if too_large:
        entry["too_large"] = too_large
    write_json_atomic(_marker_path(dst, plan.name), entry)
    return entry


def _marker_path(dst: str, name: str) -> str:
    return os.path.join(dst, STATE_DIR, name + ".json")


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


def _adopt_finished_index(dst: str) -> None:
    """Turn a previous pack's index into done-markers, then remove it: from here until the
    new index is written the folder is not a complete pack."""
    old = read_json(os.path.join(dst, INDEX_NAME))
    if old is None:
        return
    for split in old.get("splits", {}).values():
        for entry in split.get("shards", ()):
            marker = _marker_path(dst, entry["name"])
            if not os.path.exists(marker):
                write_json_atomic(marker, entry)
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
                     progress: Optional[Callable[[int, int, dict], None]] = None,
                     max_pixels: Optional[int] = None) -> dict:
    """Pack `src_dir/<split>/` into MindRecord shards in `dst_dir`; returns the index.
    Images over `max_pixels` (data.max_image_pixels) are kept out of training like damaged ones.

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
    entries = {plan.name: read_json(_marker_path(dst, plan.name)) for plan in plans}
    todo = [plan for plan in plans if not _entry_is_complete(dst, entries[plan.name], plan)]
    log.info("packing %s -> %s: %d shards (%d already written), %d samples, %.1f MB",
             src_dir, dst, len(plans), len(plans) - len(todo),
             sum(len(p.items) for p in plans), sum(p.payload for p in plans) / MB)

    started, done = time.monotonic(), len(plans) - len(todo)
    for entry in _write_all(dst, todo, workers, max_pixels):
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
    write_json_atomic(os.path.join(dst, INDEX_NAME), index, indent=1)
    _report_unreadable(index)
    shutil.rmtree(os.path.join(dst, STATE_DIR), ignore_errors=True)
    return index


def _report_unreadable(index: dict) -> None:
    """Once per split: how many files no decoder can read (kept in the shards so numbering
    stays scan_split's, skipped or refused when read, as in the folder)."""
    for split, entry in index["splits"].items():
        large = [(name, problem) for shard in entry["shards"]
                 for _, name, problem in shard.get("too_large", ())]
        for name, problem in large:
            log.warning("%s: %s: %s (kept out of training and evaluation)", split, name, problem)
        skip = {name for name, _ in large}
        names = [name for shard in entry["shards"] for _, name in shard.get("corrupt", ())
                 if name not in skip]
        if names:
            log.warning("%s: %d unreadable file(s) (truncated, damaged or not images), skipped when "
                        "training, refused by evaluation: %s%s", split, len(names),
                        ", ".join(names[:5]), ", ..." if len(names) > 5 else "")


def _write_all(dst: str, todo: list[ShardPlan], workers: Optional[int],
               max_pixels: Optional[int] = None):
    """Yield each shard's entry as it is written: inline for one worker, else one spawned
    process per worker (spawn, not fork: the parent may hold MindSpore's threads)."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    if workers == 1:
        for plan in todo:
            yield write_shard(dst, plan, max_pixels=max_pixels)
        return
    # Largest shards first so the last ones to finish are short.
    queue = sorted(todo, key=lambda p: -p.payload)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                             initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
        running = {pool.submit(write_shard, dst, plan, None, max_pixels) for plan in queue}
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
