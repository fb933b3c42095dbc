"""Packing from record streams (an archive read once, front to back) into core.data.packing's shards.

An archive cannot be planned ahead like a folder: shards are cut as (label, name, bytes)
records arrive. The page size must cover the largest image, which is not known before the
end, so pages are large (`max_image_mb`) and a shard ends on a full page: it holds as many
records as fill ceil(shard_size_mb / page) pages, so no shard ends in a padded, mostly empty
page. Each shard's records are spooled to
`.pack-state/<shard>.spool` and written by core.data.packing.write_shard (in a worker process when
`workers` > 1, while the stream reads on), so memory holds one image and disk a few shards.

Resuming: a rerun reads the stream again from the start; a shard whose done-marker matches what
the stream gives (core.data.packing's fingerprint of names, labels and sizes) is read past, not
written. The cut depends on the shard size and the page layout, so those (and the classes)
are kept in `.pack-state/settings.json` and in the index (`packed_from`): different
settings start over. Output is byte-identical to an uninterrupted pack.

MindRecord needs one page size for all shards and a row must fit a page, so the largest image
must be bounded up front (`max_image_mb`); a larger one is one error naming it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Callable, Iterable, Iterator, Optional, Sequence

from core.data.packed import FORMAT, INDEX_NAME, MB, SCHEMA, VERSION, read_json, write_json_atomic
from core.data.packing import (STATE_DIR, ShardPlan, _adopt_finished_index, _entry_is_complete,
                          _exit_with_parent, _marker_path, _remove_foreign_shards, layout,
                          write_shard)
from core.data.pipeline import DatasetError

log = logging.getLogger("core.data.stream_packing")

Record = tuple[int, str, bytes]
SETTINGS_NAME = "settings.json"
# MindRecord fills blob pages in order (a row that does not fit starts the next page) and pads
# a shard's last page to the full page size; a row costs its bytes plus a few (measured: under
# 15). Allowing more here can only end a shard early, never spill it onto a new page.
_ROW_SLACK = 64


def _spool_path(dst: str, name: str) -> str:
    return os.path.join(dst, STATE_DIR, name + ".spool")


def write_spooled(dst: str, plan: ShardPlan) -> dict:
    """Write a shard from its spool file, then remove the spool. Runs in a worker process."""
    spool = _spool_path(dst, plan.name)
    with open(spool, "rb") as fh:
        entry = write_shard(dst, plan, (fh.read(size) for _, _, _, size in plan.items))
    os.remove(spool)
    return entry


class _Writers:
    """Writes spooled shards inline (one worker) or in spawned processes, at most `workers`
    at a time, so the stream is read while earlier shards are written."""

    def __init__(self, dst: str, workers: int, on_entry: Callable[[dict], None]):
        self.dst, self.workers, self.on_entry = dst, workers, on_entry
        self.pool, self.running = None, set()
        if workers > 1:
            self.pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                            initializer=_exit_with_parent, initargs=(os.getpid(),))

    def submit(self, plan: ShardPlan) -> None:
        if self.pool is None:
            self.on_entry(write_spooled(self.dst, plan))
            return
        while len(self.running) >= self.workers:
            self._collect(FIRST_COMPLETED)
        self.running.add(self.pool.submit(write_spooled, self.dst, plan))

    def _collect(self, when) -> None:
        done, self.running = wait(self.running, return_when=when)
        for future in done:
            try:
                self.on_entry(future.result())
            except BrokenProcessPool:
                raise DatasetError(f"a pack worker process died (out of memory?) while packing "
                                   f"into {self.dst}; run the pack again to resume, with fewer "
                                   f"workers") from None

    def finish(self) -> None:
        if self.running:
            self._collect("ALL_COMPLETED")

    def close(self) -> None:
        if self.pool is not None:
            for future in self.running:
                future.cancel()
            self.pool.shutdown(wait=True, cancel_futures=True)


def _prepare(dst: str, settings: dict) -> None:
    """Keep earlier progress only when it was made with these settings."""
    state = os.path.join(dst, STATE_DIR)
    os.makedirs(state, exist_ok=True)
    index = read_json(os.path.join(dst, INDEX_NAME))
    earlier = index.get("packed_from") if index else read_json(os.path.join(state, SETTINGS_NAME))
    if earlier == settings:
        _adopt_finished_index(dst)
    else:
        if index is not None:
            os.remove(os.path.join(dst, INDEX_NAME))
        for name in os.listdir(state):
            os.remove(os.path.join(state, name))
    for name in os.listdir(state):
        if name.endswith(".spool"):
            os.remove(os.path.join(state, name))  # a killed run's half-read shard
    write_json_atomic(os.path.join(state, SETTINGS_NAME), settings)


def pack_records(dst_dir: str | os.PathLike, splits: dict[str, Callable[[], Iterable[Record]]],
                 classes: Sequence[str], shard_size_mb: float = 256, max_image_mb: float = 16,
                 workers: Optional[int] = None, on_shard: Optional[Callable[[dict], None]] = None,
                 index_extra: Optional[dict] = None) -> dict:
    """Pack each split's records into shards in `dst_dir`; returns the index (written last).

    `splits` maps a split name to a function returning its records (called once, in order);
    `on_shard(entry)` runs after each shard written or found done; `index_extra` adds keys to
    the index (say, class words)."""
    if shard_size_mb <= 0 or max_image_mb <= 0:
        raise DatasetError(f"shard size {shard_size_mb} MB, largest image {max_image_mb} MB: "
                           f"expected positive numbers")
    dst = os.path.abspath(dst_dir)
    shard_bytes, largest = int(shard_size_mb * MB), int(max_image_mb * MB)
    page, header = layout(shard_bytes, largest)
    classes_hash = hashlib.sha256(json.dumps(list(classes)).encode()).hexdigest()
    settings = {"shard_bytes": shard_bytes, "largest": largest, "page_size": page,
                "header_size": header, "classes": classes_hash, "splits": list(splits)}
    _prepare(dst, settings)
    entries: dict[str, dict] = {}

    def finished(entry: dict) -> None:
        entries[entry["name"]] = entry
        if on_shard:
            on_shard(entry)

    samples: dict[str, int] = {}
    names: dict[str, list[str]] = {}
    writers = _Writers(dst, max(1, workers or os.cpu_count() or 1), finished)
    try:
        for split, records in splits.items():
            names[split], samples[split] = [], 0
            for plan, spooled in _cut(dst, split, records(), shard_bytes, largest, page, header):
                names[split].append(plan.name)
                samples[split] += len(plan.items)
                if spooled:
                    writers.submit(plan)
                else:
                    finished(read_json(_marker_path(dst, plan.name)))
        writers.finish()
    finally:
        writers.close()

    _remove_foreign_shards(dst, list(splits), {n for split in names.values() for n in split})
    index = {"format": FORMAT, "version": VERSION, "classes": list(classes), "schema": SCHEMA,
             "packed_from": settings, **(index_extra or {}),
             "splits": {split: {"samples": samples[split],
                                "shards": [entries[n] for n in names[split]]} for split in splits}}
    write_json_atomic(os.path.join(dst, INDEX_NAME), index, indent=1)
    shutil.rmtree(os.path.join(dst, STATE_DIR), ignore_errors=True)
    return index


def _cut(dst: str, split: str, records: Iterable[Record], shard_bytes: int, largest: int,
         page: int, header: int) -> Iterator[tuple[ShardPlan, bool]]:
    """Yield (plan, spooled) per shard as its last record is read; a shard with a
    done-marker is not spooled, and must turn out to hold what the marker says."""
    items: list[tuple[str, str, int, int]] = []
    first = number = 0
    spool = None

    def close_shard() -> tuple[ShardPlan, bool]:
        plan = ShardPlan(split, number, first, tuple(items), page, header)
        if spool is not None:
            spool.close()
            return plan, True
        marker = _marker_path(dst, plan.name)
        if not _entry_is_complete(dst, read_json(marker), plan):
            os.remove(marker)
            raise DatasetError(f"shard {plan.name} in {dst} is damaged or was packed from other "
                               f"images than the source gives now; run the pack again to "
                               f"rewrite it")
        return plan, False

    pages = page_used = 0
    target_pages = max(1, -(-shard_bytes // page))

    def fill(size: int) -> tuple[int, int]:
        """(pages, bytes used in the last) once a row of `size` is added."""
        need = size + _ROW_SLACK
        return (pages, page_used + need) if pages and page_used + need <= page else (pages + 1, need)

    try:
        for label, name, data in records:
            if len(data) > largest:
                raise DatasetError(f"{name} is {len(data) / MB:.3f} MB, above the largest image the "
                                   f"shards hold ({largest / MB:.3f} MB): rerun with a larger "
                                   f"--max-image-mb")
            if items and fill(len(data))[0] > target_pages:
                yield close_shard()
                first, items, spool = first + len(items), [], None
                number += 1
                pages = page_used = 0
            pages, page_used = fill(len(data))
            if not items:
                shard = f"{split}-{number:05d}.mindrecord"
                if not os.path.exists(_marker_path(dst, shard)):
                    spool = open(_spool_path(dst, shard), "wb")
            items.append((name, name, label, len(data)))
            if spool is not None:
                spool.write(data)
        if items:
            yield close_shard()
    finally:
        if spool is not None and not spool.closed:
            spool.close()  # a stream that failed mid-shard: the spool is removed on rerun
