"""A packed dataset read while its shards arrive (data.stream=true): the streamed source.

The split is a packed one (core.data.packed: the same index, labels, classes and sample numbers)
whose shard files are not on this machine when training starts. A `ShardSource` brings each shard
into a bounded local cache when asked, verified against the pack's index (cloud.storage.shard_cache
does it over S3/OBS; core knows only the protocol). The reader here walks the sample order it is
given, whatever it is (rows(indices, start, corrupt, workers), core.data.pipeline.Rows):

* it holds each shard from its first need to its last sample of the order, and the next
  `prefetch` shards by first need beyond those it has started (the source fetches held shards in
  the background, in the order they were asked for);
* it reads each sample's bytes straight out of the shard file: MindRecord's blob pages, located
  through the shard's own .db index (ROW_ID -> page and offsets), one `os.pread` per sample;
* it gives a shard back (`release`) after its last sample of the order has been read, so the
  cache may evict it;
* when the cache has no room for the shard needed now, it gives back the held shard whose next
  use is furthest (fetched again when needed): the cache stays within its limit whatever the
  order, at the price of downloading again what a too-small cache could not keep;
* a pass starts before its first shards have arrived (`ranged_bytes`, data.ranged_reads_mb): a
  sample whose shard is still on its way is read straight from the store (one ranged GET of its
  bytes) until the pass has read that many bytes so; those bytes come twice, and the first steps
  take seconds instead of the time a window of whole shards takes to arrive. Each such sample is
  checked against its shard once the shard has arrived and passed its sha256 (at the latest at
  the shard's last sample of the pass, where the reader waits for it): a difference stops the
  run with one line naming the shard.

The samples come out as the staged pack's do (core.data.packed.PackedSplit.rows): the same bytes,
labels and unreadable-image replacement, in the same order, so a streamed run equals a staged one.
"""
from __future__ import annotations

import bisect
import functools
import json
import logging
import os
import sqlite3
import time
import urllib.parse
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence

import numpy as np

from core.data.packed import PackedSplit, load_packed_split, read_index, readable_order
from core.data.pipeline import CorruptImages, DatasetError

log = logging.getLogger("core.data.streamed")

# Open shard files a reader keeps at once (each a file descriptor); others are reopened.
MAX_OPEN_SHARDS = 32


class ShardSource(Protocol):
    """Where a streamed split's shards come from: a local cache that an outer layer fills.

    Names are the shard's data file name in the pack's index (`train-00000.mindrecord`); its
    `.db` index file comes with it. Every call may come from any thread.
    """

    def hold(self, name: str) -> None:
        """The caller will need `name`: keep it in the cache until `release`, and start fetching
        it in the background (after shards held earlier) if it is not there. Returns at once."""

    def path(self, name: str, spare: Callable[[], bool]) -> str:
        """The local path of held shard `name`, verified against the index; waits for it (and
        fetches it in this thread if nobody is). When the cache has no room for it, calls
        `spare()`, which releases another of the caller's shards (True) or has none (False),
        and tries again. Raises DatasetError (one line) when the shard cannot be had."""

    def release(self, name: str) -> None:
        """Undo one `hold`: the cache may evict the shard (or drop its pending fetch)."""

    def index_file(self, name: str) -> str:
        """A local, verified copy of shard `name`'s `.db` (its rows' file names), fetched alone
        when the shard is not in the cache (the sample ledger names samples of any shard)."""

    def ready(self, name: str) -> bool:
        """Held shard `name` is in the cache and verified: path() would return at once."""

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` of shard `name`'s data file, read from where the shards
        come from (not the cache): a sample needed before its shard has arrived. Raises
        DatasetError (one line) when they cannot be had."""


@dataclass(frozen=True)
class StreamedSplit(PackedSplit):
    """A packed split (core.data.packed.PackedSplit) whose shards come from a ShardSource.
    `entries` are the split's shard entries of index.json; `prefetch` how many shards a reader
    asks for beyond those it has started; `ranged_bytes` how many bytes of samples a pass may
    read from the source before their shards arrive."""
    source: Optional[ShardSource] = None
    entries: tuple = ()
    prefetch: int = 2
    ranged_bytes: int = 0

    def sample_names(self, indices: Sequence[int]) -> list[str]:
        """Each sample's file path relative to the split (as core.data.packed names it), from
        the shards' .db files: no image bytes are fetched for it."""
        firsts = np.array([entry["first"] for entry in self.entries], np.int64)
        indices = np.asarray(indices, np.int64)
        shards = np.searchsorted(firsts, indices, side="right") - 1
        names = []
        for shard, index in zip(shards.tolist(), indices.tolist()):
            column = _db_names(self.source.index_file(self.entries[shard]["name"]))
            names.append(column[index - int(firsts[shard])])
        return names

    def rows(self, indices: np.ndarray, start: int, corrupt: CorruptImages, workers: int):
        """(image bytes, label) of the samples indices[start:], read as their shards arrive
        (`workers` is for the decoding that follows: one thread reads)."""
        order = readable_order(self, indices, corrupt)[start:]
        import mindspore.dataset as ds
        return ds.GeneratorDataset(_StreamedRows(self, order, corrupt),
                                   column_names=["image", "label"], num_parallel_workers=1,
                                   python_multiprocessing=False)


class StreamedDataset:
    """A packed dataset root whose shards stream in (a core.data.sources.DataSource): `root` is
    the local folder holding the pack's index.json (the shards land there as they arrive),
    `where` names the remote pack in messages."""

    def __init__(self, root: str | os.PathLike, source: ShardSource, prefetch: int = 2,
                 where: Optional[str] = None, ranged_bytes: int = 0):
        self.root = Path(root)
        self.source = source
        self.prefetch = max(0, int(prefetch))
        self.ranged_bytes = max(0, int(ranged_bytes))
        self.where = where or str(root)

    def has_split(self, name: str) -> bool:
        return name in read_index(self.root)["splits"]

    def split(self, name: str, classes: Optional[Sequence[str]] = None) -> StreamedSplit:
        base = load_packed_split(self.root, name, classes, require_files=False)
        entries = tuple(read_index(self.root)["splits"][name]["shards"])
        values = {f.name: getattr(base, f.name) for f in fields(PackedSplit)}
        return StreamedSplit(**values, source=self.source, entries=entries, prefetch=self.prefetch,
                             ranged_bytes=self.ranged_bytes)

    def verify(self, workers: Optional[int] = None, reuse: bool = False) -> dict:
        """Each shard is verified against the index as it arrives (ShardSource.path)."""
        return {"files": 0, "bytes": 0, "seconds": 0.0, "streamed": True}


# --------------------------------------------------------------------------- the order's plan


class _Plan:
    """Where the order's samples live: shard of each position, each shard's positions, and the
    shards in order of first need."""

    def __init__(self, split: StreamedSplit, order: np.ndarray):
        firsts = np.array([entry["first"] for entry in split.entries], np.int64)
        self.order = np.asarray(order, np.int64)
        self.shard_at = (np.searchsorted(firsts, self.order, side="right") - 1).astype(np.int64)
        by_shard = np.argsort(self.shard_at, kind="stable")
        cuts = np.flatnonzero(np.diff(self.shard_at[by_shard])) + 1
        self.positions: dict[int, np.ndarray] = {}
        for group in np.split(by_shard, cuts) if len(by_shard) else ():
            self.positions[int(self.shard_at[group[0]])] = group  # ascending (stable sort)
        self.first_need = sorted(self.positions, key=lambda s: int(self.positions[s][0]))
        self.first_pos = {s: int(p[0]) for s, p in self.positions.items()}
        self.last_pos = {s: int(p[-1]) for s, p in self.positions.items()}

    def next_use(self, shard: int, after: int) -> float:
        """The first position > `after` that reads `shard` (inf when none)."""
        positions = self.positions.get(shard)
        if positions is None:
            return float("inf")
        i = bisect.bisect_right(positions, after)
        return float(positions[i]) if i < len(positions) else float("inf")


class _StreamedRows:
    """GeneratorDataset's iterable source: the order's (bytes, label) rows, shard by shard as
    the ShardSource delivers them. Each iteration is one pass with its own holds, all released
    when it ends (or is abandoned: the generator's close)."""

    def __init__(self, split: StreamedSplit, order: np.ndarray, corrupt: CorruptImages):
        self.split = split
        self.order = order
        self.corrupt = corrupt

    def __iter__(self):
        return self._rows()

    def _rows(self):
        split, source = self.split, self.split.source
        plan = _Plan(split, self.order)
        names = [entry["name"] for entry in split.entries]
        held: set[int] = set()
        files: "OrderedDict[int, _ShardFile]" = OrderedDict()
        arrived: set[int] = set()         # opened from the cache at least once this pass
        unchecked: dict[int, list] = {}   # shard -> [(row, crc32)] of samples read by range
        position = [0]
        current = [-1]

        def hold(shard: int) -> None:
            if shard not in held:
                held.add(shard)
                source.hold(names[shard])

        def give_back(shard: int) -> None:
            held.discard(shard)
            opened = files.pop(shard, None)
            if opened is not None:
                opened.close()
            source.release(names[shard])

        def spare() -> bool:
            """Under cache pressure: give back the held shard read furthest from now."""
            others = [s for s in held if s != current[0]]
            if not others:
                return False
            give_back(max(others, key=lambda s: plan.next_use(s, position[0] - 1)))
            return True

        ahead = 0  # plan.first_need[:ahead] have been held (or started)
        started = 0
        early = _EarlyReads(split, plan, names, arrived, hold)
        waited, opened_count, read = 0.0, 0, 0
        try:
            for p, shard in enumerate(plan.shard_at.tolist()):
                position[0] = p
                if plan.first_pos[shard] == p:
                    started += 1
                while ahead < len(plan.first_need) and ahead < started + split.prefetch:
                    hold(plan.first_need[ahead])
                    ahead += 1
                index = int(plan.order[p])
                row = index - split.entries[shard]["first"]
                opened = files.get(shard)
                early.plan_until(p)
                data = early.take(p)
                if data is not None and shard not in arrived:
                    unchecked.setdefault(shard, []).append((row, zlib.crc32(data)))
                else:
                    if opened is None:
                        current[0] = shard
                        hold(shard)  # given back under pressure, needed again
                        began = time.monotonic()
                        path = self._path(names[shard], spare)
                        waited += time.monotonic() - began
                        opened_count += 1
                        opened = _ShardFile.local(path, split.entries[shard])
                        files[shard] = opened
                        arrived.add(shard)
                        self._check(opened, names[shard], unchecked.pop(shard, ()))
                        while len(files) > MAX_OPEN_SHARDS:
                            files.popitem(last=False)[1].close()
                    else:
                        files.move_to_end(shard)
                    data = opened.read(row)
                if plan.last_pos[shard] == p:  # its last sample of this order: hand it back
                    give_back(shard)
                read += 1
                yield data, np.int32(split.labels[index])
        except DatasetError as exc:  # one line for the run (core.data.pipeline.guarded)
            self.corrupt.fatal = self.corrupt.fatal or str(exc)
            raise
        finally:
            early.close()
            if read:
                log.info("streamed %s: %d samples from %d shard openings; waited %.1f s for "
                         "shards to arrive (growing waits: the link is slower than training); "
                         "%d samples (%.1f MB) read from the store before their shards arrived",
                         split.split, read, opened_count, waited, early.samples,
                         early.bytes / 2 ** 20)
            for shard in list(held):
                give_back(shard)
            for opened in files.values():
                opened.close()

    def _check(self, opened: "_ShardFile", name: str, samples) -> None:
        """Samples read from the source before the shard arrived are the verified shard's."""
        for row, crc in samples:
            if zlib.crc32(opened.read(row)) != crc:
                raise DatasetError(
                    f"shard {name}: sample {row} as read from the store before the shard arrived "
                    f"differs from the shard verified against the pack's index (the stored object "
                    f"changed or the store served other bytes); the run stops: check the store, "
                    f"then resume with --resume auto (or set data.ranged_reads_mb=0)")

    def _path(self, name: str, spare: Callable[[], bool]) -> str:
        """The source's local path; its one-line error becomes the run's (the pipeline wraps
        what a source raises: core.data.pipeline.guarded restores it)."""
        try:
            return self.split.source.path(name, spare)
        except DatasetError as exc:
            self.corrupt.fatal = str(exc)
            raise


class _EarlyReads:
    """The pass's samples read from the source by range while their shards are on their way:
    positions up to AHEAD beyond the reader's whose shard has not arrived (and that are not the
    shard's last of the pass: there the reader waits for the shard, which checks them), until
    `ranged_bytes` are spent, read by THREADS at once (one request's latency each, not one after
    another)."""

    AHEAD = 96
    THREADS = 8
    RECHECK_S = 0.05  # how often a shard not yet arrived is asked again

    def __init__(self, split: StreamedSplit, plan: _Plan, names: list, arrived: set, hold):
        self.split, self.plan, self.names, self.arrived, self.hold = split, plan, names, arrived, hold
        self.left = split.ranged_bytes
        self.next = 0
        self.pool: Optional[ThreadPoolExecutor] = None
        self.futures: dict = {}
        self.stored: dict[int, _ShardFile] = {}
        self.ready: set[int] = set()
        self.asked: dict[int, float] = {}
        self.samples = self.bytes = 0

    def plan_until(self, position: int) -> None:
        plan, end = self.plan, min(len(self.plan.order), position + self.AHEAD)
        while self.left > 0 and self.next < end:
            q = self.next
            self.next += 1
            shard = int(plan.shard_at[q])
            if q == plan.last_pos[shard] or shard in self.arrived or self._ready(shard):
                continue
            self.hold(shard)
            stored = self.stored.get(shard)
            if stored is None:
                stored = self.stored[shard] = _ShardFile.stored(
                    self.split.source, self.names[shard], self.split.entries[shard])
            row = int(plan.order[q]) - self.split.entries[shard]["first"]
            self.left -= int(stored.lengths[row])
            if self.pool is None:
                self.pool = ThreadPoolExecutor(self.THREADS, thread_name_prefix="ranged-read")
            self.futures[q] = self.pool.submit(stored.read, row)

    def _ready(self, shard: int) -> bool:
        if shard in self.ready:
            return True
        now = time.monotonic()
        if now - self.asked.get(shard, -1.0) < self.RECHECK_S:
            return False
        self.asked[shard] = now
        if self.split.source.ready(self.names[shard]):
            self.ready.add(shard)
            return True
        return False

    def take(self, position: int) -> Optional[np.ndarray]:
        """The sample at `position` if it was read by range (waits for its request)."""
        future = self.futures.pop(position, None)
        if future is None:
            return None
        data = future.result()
        self.samples += 1
        self.bytes += len(data)
        return data

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.futures.clear()


# --------------------------------------------------------------------------- one shard file


def _open_db(path: str) -> sqlite3.Connection:
    """A shard's .db, read-only and never written (a URI: '#', '?' and '%' in the path quoted)."""
    return sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro&immutable=1",
                           uri=True)


@functools.lru_cache(maxsize=4096)
def _db_names_of(path: str, size: int, mtime_ns: int) -> tuple[str, ...]:
    db = _open_db(path)
    try:
        columns = [row[1] for row in db.execute("PRAGMA table_info(INDEXES)")]
        column = next((c for c in columns if c.startswith("file_name_")), None)
        if column is None:
            raise DatasetError(f"{path} has no file_name index: not a pack of this runner")
        rows = db.execute(f"SELECT DISTINCT ROW_ID, {column} FROM INDEXES ORDER BY ROW_ID").fetchall()
    except sqlite3.Error as exc:
        raise DatasetError(f"cannot read {path} ({exc}); re-pack the dataset") from None
    finally:
        db.close()
    return tuple(name for _, name in rows)


def _db_names(path: str) -> tuple[str, ...]:
    """The file_name column of a shard's .db, in row order (cached per file version)."""
    stat = os.stat(path)
    return _db_names_of(str(path), stat.st_size, stat.st_mtime_ns)



class _ShardFile:
    """Random access to the image bytes of one MindRecord shard written by core.data.packing:
    the cached file (`local`), or the stored object through ranged reads before it has arrived
    (`stored`).

    MindRecord keeps a file's header (8-byte length, then JSON with `header_size`, `page_size`)
    before fixed-size pages; its `.db` (SQLite) gives each row's blob page and offsets. With one
    bytes column (`image`) a row's blob is an 8-byte little-endian length and the bytes. Every
    read checks that length against the offsets, so a layout this code does not know is one
    error line, never wrong pixels."""

    def __init__(self, where: str, pread: Callable[[int, int], bytes], db_path: str, entry: dict,
                 close: Callable[[], None] = lambda: None):
        self.path = where
        self.pread = pread  # (length, offset) -> bytes
        self._close = close
        try:
            header = self._header()
            if header.get("compression_size", 0) or "header_size" not in header:
                raise self._unknown("compressed or unknown header")
            self.starts, self.lengths = self._rows(db_path, int(header["header_size"]),
                                                   int(header["page_size"]))
            if len(self.starts) != entry["samples"]:
                raise DatasetError(f"shard {where}: {len(self.starts)} rows in its .db, the index "
                                   f"says {entry['samples']}; re-pack the dataset")
        except BaseException:
            self.close()
            raise

    @classmethod
    def local(cls, path: str, entry: dict) -> "_ShardFile":
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return cls(path, lambda length, offset: os.pread(fd, length, offset), path + ".db", entry,
                   close=lambda: os.close(fd))

    @classmethod
    def stored(cls, source: ShardSource, name: str, entry: dict) -> "_ShardFile":
        return cls(name, lambda length, offset: source.read_range(name, offset, length),
                   source.index_file(name), entry)

    def _header(self) -> dict:
        size = int.from_bytes(self.pread(8, 0), "little")
        if not 0 < size < 1 << 30:
            raise self._unknown("header length")
        try:
            return json.loads(self.pread(size, 8))
        except ValueError:
            raise self._unknown("header") from None

    def _rows(self, db_path: str, header_size: int, page_size: int):
        db = _open_db(db_path)
        try:
            rows = np.array(db.execute(
                "SELECT DISTINCT ROW_ID, PAGE_ID_BLOB, PAGE_OFFSET_BLOB, PAGE_OFFSET_BLOB_END "
                "FROM INDEXES ORDER BY ROW_ID").fetchall(), np.int64).reshape(-1, 4)
        except sqlite3.Error as exc:
            raise self._unknown(f".db ({exc})") from None
        finally:
            db.close()
        if len(rows) and not np.array_equal(rows[:, 0], np.arange(len(rows))):
            raise self._unknown("row numbering")
        return header_size + rows[:, 1] * page_size + rows[:, 2], rows[:, 3] - rows[:, 2]

    def _unknown(self, what: str) -> DatasetError:
        return DatasetError(f"shard {self.path}: unexpected MindRecord layout ({what}); stream "
                            f"only packs written by this runner's pack command, or set "
                            f"data.stream=false to stage the dataset")

    def read(self, row: int) -> np.ndarray:
        length = int(self.lengths[row])
        blob = self.pread(length, int(self.starts[row]))
        if len(blob) != length or int.from_bytes(blob[:8], "little") != length - 8:
            raise self._unknown(f"row {row}")
        return np.frombuffer(blob, np.uint8, offset=8)

    def close(self) -> None:
        close, self._close = self._close, lambda: None
        close()
