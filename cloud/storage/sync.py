"""Copy directory trees between a Storage and a local directory, incrementally.

``download_tree`` stages a prefix into a local cache:

* parallel, through :meth:`Storage.batch`: for S3, one lean signed GET per
  object below the multipart threshold (:mod:`cloud.storage.s3lean`; boto3 for that
  object on any other answer, and for all of them with ``storage.engine``
  boto3), boto3's transfer manager in parts above it;
* incremental: a state file in the cache (``.cloud-sync-state.json``) records,
  for each completed download, the object's size and ETag and the local file's
  size and mtime; an object whose listing still matches, with its local file
  untouched, is skipped without a request;
* atomic per file (see :mod:`cloud.storage.store`), and the state is saved as files
  complete, so an interrupted stage resumes where it stopped;
* safe: every key is checked before anything is written; one with ``..``, an
  absolute path, a backslash, or resolving outside the cache fails the whole
  stage with an error naming it;
* optionally once per node (``job_id``; see :mod:`cloud.storage.node_lock`).

``upload_tree`` mirrors a local directory to a prefix, skipping files whose
remote copy has the same size and is not older than the local file. Object
times have one-second resolution, so when the remote looks older but the size
matches, the local file's MD5 (or multipart ETag) decides.

Both show their progress (bytes, files, MB/s: a bar at a terminal, else a log
line every ``progress_interval_s``), log a summary, and return :class:`SyncStats`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from cloud.storage.errors import StorageError, UnsafeKeyError
from cloud.storage.node_lock import run_once_per_node
from cloud.storage.store import (INTERNAL_PREFIX, PART_MARK, ObjectInfo, Storage, remove_stale_parts,
                           walk_files)
from cloud.storage.urls import check_relative_key, safe_local_path
from core.progress import Progress

log = logging.getLogger("cloud.storage.sync")

STATE_NAME = ".cloud-sync-state.json"
STATE_FORMAT = 1
MB = 1024 * 1024


@dataclass
class SyncStats:
    """What a sync did. ``staged_by_peer``: another process on this node did it."""

    files_transferred: int = 0
    files_skipped: int = 0
    bytes_transferred: int = 0
    bytes_skipped: int = 0
    seconds: float = 0.0
    staged_by_peer: bool = False
    failed: list[str] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.bytes_transferred / MB / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        if self.staged_by_peer:
            return "staged by another process on this node"
        return (f"{self.files_transferred} files ({self.bytes_transferred / MB:.1f} MB) transferred, "
                f"{self.files_skipped} unchanged skipped, in {self.seconds:.2f} s "
                f"({self.mb_per_s:.1f} MB/s)")


class TransferProgress:
    """Bytes and files of one transfer, from the transfer's worker threads: a bar at a
    terminal, else a log line at most every ``interval_s`` (core.progress)."""

    def __init__(self, label: str, total_files: int, total_bytes: int, interval_s: float):
        self.total_files = total_files
        self.files = 0
        self.bar = Progress(total_bytes, label, interval_s=interval_s, unit="B", write=log.info)

    @property
    def bytes(self) -> int:
        return int(self.bar.done)

    def add_bytes(self, n: int) -> None:
        self.bar.add(n)

    def file_done(self) -> None:
        with self.bar.lock:
            self.files += 1
            self.bar.add(0, f"{self.files}/{self.total_files} files")

    def close(self) -> None:
        self.bar.close()


# --------------------------------------------------------------------------- state


class SyncState:
    """key -> (object size, object version, local size, local mtime_ns) of a cache."""

    def __init__(self, path: str, source: str):
        self.path = path
        self.source = source
        self.files: dict[str, list] = {}
        self._lock = threading.Lock()
        self._dirty = False
        self._saved_at = time.monotonic()
        self._save_cost = 0.0

    @classmethod
    def load(cls, path: str, source: str) -> "SyncState":
        state = cls(path, source)
        try:
            with open(path) as f:
                data = json.load(f)
            if data.get("format") == STATE_FORMAT and data.get("source") == source:
                state.files = {k: list(v) for k, v in data.get("files", {}).items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("ignoring unreadable sync state %s (%s); files will be re-checked", path, exc)
        return state

    def unchanged(self, info: ObjectInfo, rel: str, local_path: str) -> bool:
        entry = self.files.get(rel)
        if not entry or entry[0] != info.size or entry[1] != info.version:
            return False
        try:
            st = os.stat(local_path)
        except OSError:
            return False
        return st.st_size == entry[2] and st.st_mtime_ns == entry[3]

    def record(self, rel: str, info: ObjectInfo, local_path: str) -> None:
        st = os.stat(local_path)
        with self._lock:
            self.files[rel] = [info.size, info.version, st.st_size, st.st_mtime_ns]
            self._dirty = True

    def forget(self, rel: str) -> None:
        with self._lock:
            self._dirty |= self.files.pop(rel, None) is not None

    def save(self, min_interval_s: float = 0.0) -> None:
        """Write atomically, if changed and ``min_interval_s`` passed since the last
        save; saves also wait 20x the last save's duration, so rewriting the
        state of a million-file cache takes at most ~5% of the time."""
        with self._lock:
            now = time.monotonic()
            if not self._dirty or now - self._saved_at < max(min_interval_s, self._save_cost * 20):
                return
            data = json.dumps({"format": STATE_FORMAT, "source": self.source, "files": self.files},
                              separators=(",", ":"))
            self._dirty = False
            tmp = f"{self.path}{PART_MARK}{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(data)
            os.replace(tmp, self.path)
            self._saved_at = time.monotonic()
            self._save_cost = self._saved_at - now

    def flush(self) -> None:
        """Save now if anything changed (end of a sync)."""
        with self._lock:
            self._save_cost = 0.0
        self.save()


# --------------------------------------------------------------------------- download


def _local_path(dest_dir: str, rel: str, real_root: str, real_dirs: dict[str, str]) -> str:
    """``safe_local_path(dest_dir, rel)`` resolving each directory once for a whole listing
    (realpath costs an lstat per path component): the key's lexical checks, its directory's
    real path (cached), and the file itself resolved only if it is a symlink."""
    check_relative_key(rel)
    head, _, name = rel.rpartition("/")
    real_dir = real_dirs.get(head)
    if real_dir is None:
        real_dir = os.path.realpath(os.path.join(real_root, *head.split("/"))) if head else real_root
        if real_dir != real_root and os.path.commonpath([real_root, real_dir]) != real_root:
            raise UnsafeKeyError(rel, f"resolves outside {dest_dir}")
        real_dirs[head] = real_dir
    target = os.path.join(real_dir, name)
    if os.path.islink(target):
        target = os.path.realpath(target)
        if os.path.commonpath([real_root, target]) != real_root or target == real_root:
            raise UnsafeKeyError(rel, f"resolves outside {dest_dir}")
    return target


def _plan_download(storage: Storage, prefix: str, dest_dir: str) -> list[tuple[str, ObjectInfo, str]]:
    """(relative path, object, local path) for every object, all keys checked first."""
    base = prefix.strip("/")
    base = f"{base}/" if base else ""
    real_root = os.path.realpath(dest_dir)
    plan, unsafe, real_dirs = [], [], {}
    for info in storage.list(base):
        rel = info.key[len(base):]
        if rel.endswith("/"):
            continue  # directory marker
        try:
            local = _local_path(dest_dir, rel, real_root, real_dirs)
            name = os.path.basename(rel)
            if name.startswith(INTERNAL_PREFIX) or PART_MARK in name:
                raise UnsafeKeyError(rel, "name reserved for the cache's own files")
        except UnsafeKeyError as exc:
            unsafe.append(exc)
            continue
        plan.append((rel, info, local))
    if unsafe:
        first = unsafe[0]
        more = f" ({len(unsafe)} unsafe keys)" if len(unsafe) > 1 else ""
        raise UnsafeKeyError(
            first.key, f"{first.reason}; nothing was downloaded from "
                       f"{storage.describe(base.rstrip('/'))} into {dest_dir}{more}")
    return plan


def download_tree(storage: Storage, prefix: str, dest_dir: str, *, workers: int | None = None,
                  job_id: str | None = None, lock_timeout_s: float = 3600.0,
                  progress_interval_s: float | None = None) -> SyncStats:
    """Stage every object under ``prefix`` of ``storage`` into ``dest_dir``.

    ``workers`` defaults to ``storage.settings.workers``. With ``job_id``, only
    one process per node downloads (the others wait; see cloud.storage.node_lock).
    Raises StorageError (after finishing the other files) if any download
    fails, and UnsafeKeyError, before writing anything, for a hostile key.
    """
    dest_dir = os.path.abspath(dest_dir)
    os.makedirs(dest_dir, exist_ok=True)
    source = storage.describe(prefix.strip("/"))

    def stage() -> SyncStats:
        return _download(storage, prefix, dest_dir, source, workers, progress_interval_s)

    if not job_id:
        return stage()
    started = time.monotonic()
    ran, stats = run_once_per_node(dest_dir, job_id, stage, name="stage", source=source,
                                   timeout_s=lock_timeout_s)
    if ran:
        return stats
    return SyncStats(seconds=time.monotonic() - started, staged_by_peer=True)


def _download(storage: Storage, prefix: str, dest_dir: str, source: str,
              workers: int | None, progress_interval_s: float | None) -> SyncStats:
    started = time.monotonic()
    interval = storage.settings.progress_interval_s if progress_interval_s is None else progress_interval_s
    remove_stale_parts(dest_dir)
    plan = _plan_download(storage, prefix, dest_dir)
    if not plan:
        log.warning("no objects under %s: nothing to download (is the URL right?)", source)
    state = SyncState.load(os.path.join(dest_dir, STATE_NAME), source)
    stats = SyncStats()
    todo = []
    for rel, info, local in plan:
        if state.unchanged(info, rel, local):
            stats.files_skipped += 1
            stats.bytes_skipped += info.size
        else:
            todo.append((rel, info, local))
    check_free_space(todo, dest_dir, source)
    for directory in sorted({os.path.dirname(local) for _, _, local in todo}):
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {directory} for {source}: {exc}") from exc

    progress = TransferProgress(f"download {source}", len(todo), sum(i.size for _, i, _ in todo),
                                interval)
    errors: list[str] = []
    errors_lock = threading.Lock()

    def finished(rel: str, info: ObjectInfo, local: str) -> Callable[[BaseException | None], None]:
        def on_done(error: BaseException | None) -> None:
            if error is None:
                state.record(rel, info, local)
                state.save(min_interval_s=max(interval, 1.0))
                progress.file_done()
                return
            state.forget(rel)
            with errors_lock:
                errors.append(f"{storage.describe(info.key)}: {error}")
        return on_done

    # Multipart objects and small ones in two rounds, not mixed: on few cores
    # two thread pools fighting over the GIL cost more than the overlap gains.
    threshold = storage.settings.multipart_threshold
    rounds = [[item for item in todo if item[1].size >= threshold],
              [item for item in todo if item[1].size < threshold]]
    try:
        for items in rounds:
            if not items:
                continue
            with storage.batch(workers) as batch:
                for rel, info, local in items:
                    batch.download(info.key, local, size=info.size, version=info.version,
                                   on_bytes=progress.add_bytes,
                                   on_done=finished(rel, info, local))
    finally:
        state.flush()
        progress.close()
    _record(stats, len(todo), errors, progress, started)
    if errors:
        log.error("download %s: %d of %d files failed; first: %s", source, len(errors), len(todo), errors[0])
        raise StorageError(f"{len(errors)} of {len(todo)} downloads from {source} failed "
                           f"(the others are cached; re-run to retry); first: {errors[0]}")
    log.info("download %s -> %s: %s", source, dest_dir, stats.summary())
    return stats


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def check_free_space(todo: list, dest_dir: str, source: str) -> None:
    """Before anything is downloaded: what is still to stage must fit in the cache's free
    space (ModelArts' /cache is about 50 GB on some flavours), else one line naming both sizes
    and the way out, instead of a disk-full error halfway through."""
    import shutil
    needed = 0
    for _, info, local in todo:  # a file replaced in place frees its old size
        try:
            needed += info.size - os.path.getsize(local)
        except OSError:
            needed += info.size
    probe = dest_dir
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "."
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise StorageError(
            f"{source} needs {_size(needed)} more in {dest_dir} but only {_size(free)} is free "
            f"there: stage it on a larger disk (--cache_dir or MNV3_CACHE_DIR on the node's NVMe or "
            f"an SFS mount; on ModelArts a flavour with a larger /cache), or pack it smaller "
            f"(local.py pack), or train from the pack without staging it (Streaming: data.stream=true "
            f"keeps at most data.cache_limit_gb in the cache)")


def _record(stats: SyncStats, attempted: int, errors: list, progress, started: float) -> None:
    """Fill a finished transfer's counters (shared by downloads and uploads)."""
    stats.files_transferred = attempted - len(errors)
    stats.bytes_transferred = progress.bytes
    stats.seconds = time.monotonic() - started
    stats.failed = errors


# --------------------------------------------------------------------------- upload


def _local_files(src_dir: str, files: Iterable[str] | None = None
                 ) -> list[tuple[str, str, os.stat_result]]:
    if files is None:
        return list(walk_files(src_dir, src_dir))
    real_root = os.path.realpath(src_dir)
    return [(rel, path, os.stat(path))
            for rel, path in ((rel, safe_local_path(src_dir, rel, real_root)) for rel in files)]


_MD5_ETAG = re.compile(r"^[0-9a-f]{32}(-[0-9]+)?$")


def local_etag(path: str, remote_etag: str, chunksize: int) -> str | None:
    """The S3 ETag ``path`` would have, in the form of ``remote_etag``: the MD5 of
    a single-part object, or ``md5(part md5s)-N`` for parts of ``chunksize``.
    None when ``remote_etag`` is not MD5-based (local versions, SSE-KMS)."""
    if not _MD5_ETAG.match(remote_etag or ""):
        return None
    multipart = "-" in remote_etag
    whole = hashlib.md5(usedforsecurity=False)
    parts = []
    with open(path, "rb") as f:
        while block := f.read(chunksize if multipart else 1 << 20):
            if multipart:
                parts.append(hashlib.md5(block, usedforsecurity=False).digest())
            else:
                whole.update(block)
    if not multipart:
        return whole.hexdigest()
    return f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"


def upload_tree(src_dir: str, storage: Storage, prefix: str = "", *, workers: int | None = None,
                progress_interval_s: float | None = None,
                files: Iterable[str] | None = None) -> SyncStats:
    """Upload every file under ``src_dir`` (or only ``files``, paths relative to it) to
    ``prefix``, skipping up-to-date ones.

    A file is skipped when the remote object has the same size and either a
    modification time not older than the local file's or the same content
    (ETag computed locally).
    """
    started = time.monotonic()
    src_dir = os.path.abspath(src_dir)
    if not os.path.isdir(src_dir):
        raise StorageError(f"cannot upload {src_dir}: not a directory")
    base = prefix.strip("/")
    base = f"{base}/" if base else ""
    target = storage.describe(base.rstrip("/"))
    interval = storage.settings.progress_interval_s if progress_interval_s is None else progress_interval_s
    remote = {info.key[len(base):]: info for info in storage.list(base)}
    stats = SyncStats()
    todo = []
    for rel, path, st in _local_files(src_dir, files):
        have = remote.get(rel)
        if have is not None and have.size == st.st_size and (
                have.mtime >= st.st_mtime or
                have.version == local_etag(path, have.version, storage.settings.multipart_chunksize)):
            stats.files_skipped += 1
            stats.bytes_skipped += st.st_size
        else:
            todo.append((rel, path, st.st_size))

    progress = TransferProgress(f"upload {target}", len(todo), sum(size for *_, size in todo),
                                interval)
    errors: list[str] = []
    errors_lock = threading.Lock()

    def finished(rel: str) -> Callable[[BaseException | None], None]:
        def on_done(error: BaseException | None) -> None:
            if error is None:
                progress.file_done()
                return
            with errors_lock:
                errors.append(f"{rel}: {error}")
        return on_done

    try:
        if todo:
            with storage.batch(workers) as batch:
                for rel, path, _size in todo:
                    batch.upload(path, base + rel, on_bytes=progress.add_bytes, on_done=finished(rel))
    finally:
        progress.close()
    _record(stats, len(todo), errors, progress, started)
    if errors:
        log.error("upload %s: %d of %d files failed; first: %s", target, len(errors), len(todo), errors[0])
        raise StorageError(f"{len(errors)} of {len(todo)} uploads from {src_dir} to {target} failed; "
                           f"first: {errors[0]}")
    log.info("upload %s -> %s: %s", src_dir, target, stats.summary())
    return stats
