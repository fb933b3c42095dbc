"""A node's bounded cache of a streamed pack's shards (data.stream=true), over S3/OBS.

`ShardCache` is the core.data.streamed.ShardSource of one process: the streamed split holds the
shards it will read soon, asks for each one's local path when it needs it, and releases it once
read. Every process of a node that streams the same pack shares one cache folder:

    <cache>/stream/<bucket>_<prefix>_<hash>/
        index.json                  the pack's index, fetched at start (the trust anchor)
        train-00000.mindrecord(.db) shards, under their final names only once verified
        .cloud-stream/
            node.lock               flock: one process at a time decides (admission, eviction)
            state.json              each live process's held shards and reserved downloads
            procs/<id>.lock         flock held for a process's life: a dead one's entry is void
            claims/<shard>.lock     flock: the one process downloading (or checking) a shard
            verified/<shard>.json   each file's size, mtime, ctime, inode, sha256 when checked
            incoming/<id>.<file>    downloads in progress (a dead process's are removed)

* Only held shards are fetched: in the background, in the order they were held (the prefetch),
  or at once by the process that needs one now. A shard is verified (size, then sha256 against
  index.json) before it takes its final name; one that fails is fetched again (3 downloads in
  all, then one error line naming it). A verified copy whose file changed since (size, mtime,
  ctime or inode) is checked again before use.
* Two processes never download the same shard: the one holding its claim downloads, the others
  wait for the claim and find it there. flock dies with its process, so a killed downloader
  blocks nobody; its partial files are removed by the next process that opens the cache.
* The limit (`data.cache_limit_gb`): a download starts only when the shards on disk plus the
  downloads already reserved plus this one fit; otherwise shards no live process holds are
  evicted, least recently used first. A background fetch that still does not fit waits; the
  shard needed now asks its reader to give back a held shard (the one read furthest from now),
  and only when no process gives any back within `overdraw_after_s` goes over the limit, with
  a warning naming the figures. So the cache stays within the limit unless the shards the
  node's processes read at the same moment do not fit in it.
* A store that stays down (botocore's attempts and `storage.stall_timeout_s` spent) is one
  DatasetError line: the run stops there and keeps its checkpoints.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections import Counter, deque
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

from cloud.storage.errors import StorageError
from cloud.storage.store import Storage, open_storage
from core.config import ConfigError
from core.data.packed import INDEX_NAME, read_index
from core.digest import sha256_file
from core.data.pipeline import DatasetError
from core.data.streamed import StreamedDataset

log = logging.getLogger("cloud.storage.shard_cache")

STATE_DIR = ".cloud-stream"
GB = 1024 ** 3
MB = 1024 ** 2
DOWNLOADS = 3             # a shard failing verification is fetched this many times in all
PREFETCH_WORKERS = 2      # background fetches at once per process (each in parallel ranges)


def _flock_try(path: Path) -> Optional[int]:
    """An fd holding LOCK_EX on `path`, or None when another open file holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


class ShardCache:
    """One process's side of a node's shard cache (see the module docstring)."""

    def __init__(self, storage: Storage, root: str | os.PathLike, index: dict, limit_bytes: int,
                 *, workers: int = PREFETCH_WORKERS, overdraw_after_s: float = 30.0,
                 versions: Optional[dict] = None):
        self.storage = storage
        self.versions = versions or {}  # key -> ETag from a listing: lean (ranged) GETs, no HEAD
        self.root = Path(root)
        self.where = storage.describe()
        self.limit = int(limit_bytes)
        self.overdraw_after_s = overdraw_after_s
        self.entries = {entry["name"]: entry for split in index["splits"].values()
                        for entry in split["shards"]}
        self.size = {name: sum(f["size"] for f in entry["files"]) for name, entry in self.entries.items()}
        self.owner = {f["name"]: name for name, entry in self.entries.items() for f in entry["files"]}
        self.state_dir = self.root / STATE_DIR
        for sub in ("procs", "claims", "verified", "incoming", "names"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self.me = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._life = _flock_try(self.state_dir / "procs" / f"{self.me}.lock")
        self._node_fd = os.open(self.state_dir / "node.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._node_mutex = threading.Lock()     # flock does not exclude threads of one process
        self._mutex = threading.Condition()     # this process's holds and queue
        self._holds: Counter = Counter()
        self._verified_here: set[str] = set()   # held and verified: no node lock needed
        self._names_checked: dict[str, list] = {}  # names/ copies verified: their signatures
        self._queue: deque[str] = deque()
        self._failed: dict[str, DatasetError] = {}
        self._workers: list[threading.Thread] = []
        self._worker_count = max(0, int(workers))
        self._warned_overdraw = False
        self.stats = Counter()                  # downloads, bytes, verify_failures, evictions, ...
        with self._node() as state:
            self._clean(state)

    # ----------------------------------------------------------------- ShardSource

    def hold(self, name: str) -> None:
        with self._mutex:
            self._holds[name] += 1
            first = self._holds[name] == 1
            if first:
                self._queue.append(name)
                self._start_workers()
                self._mutex.notify_all()
        if first:
            with self._node() as state:
                self._pins(state).add(name)

    def release(self, name: str) -> None:
        with self._mutex:
            if self._holds[name] <= 0:
                return
            self._holds[name] -= 1
            last = self._holds[name] == 0
            if last:
                del self._holds[name]
                self._verified_here.discard(name)
                try:
                    self._queue.remove(name)
                except ValueError:
                    pass
            self._mutex.notify_all()
        if last:
            with self._node() as state:
                self._pins(state).discard(name)

    def path(self, name: str, spare: Callable[[], bool]) -> str:
        final = self.root / name
        with self._mutex:
            fast = name in self._verified_here
        if fast and final.is_file():
            self.stats["hits"] += 1
            return str(final)
        self._fetch(name, spare)
        with self._mutex:
            if self._holds[name] > 0:
                self._verified_here.add(name)
        return str(final)

    def ready(self, name: str) -> bool:
        """Held shard `name` is in the cache and verified: path() would not wait."""
        with self._mutex:
            if name in self._verified_here:
                return (self.root / name).is_file()
        return self._status(name) == "ok"

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """Bytes of shard `name`'s data file straight from the store (one ranged GET, of the
        version listed at start): a sample needed before its shard has arrived."""
        try:
            data = self.storage.read_range(name, offset, length, version=self.versions.get(name))
        except StorageError as exc:
            self.stats["store_errors"] += 1
            raise DatasetError(
                f"streaming {self.where}: shard {name} could not be read ({exc}); the run stops "
                f"here and keeps its checkpoints: run it again with --resume auto once the store "
                f"answers") from None
        if len(data) != length:
            raise DatasetError(f"streaming {self.where}: shard {name} is shorter than "
                               f"{INDEX_NAME} says ({offset + len(data)} bytes read of "
                               f"{offset + length}): upload it again from the pack")
        self.stats["ranged_reads"] += 1
        self.stats["ranged_bytes"] += length
        return data

    def index_file(self, name: str) -> str:
        """A verified copy of the shard's .db in .cloud-stream/names/ (a copy of the cached
        shard's, else fetched alone); small, and kept outside the limit's accounting."""
        expected = next(f for f in self.entries[name]["files"] if f["name"].endswith(".db"))
        final = self.state_dir / "names" / expected["name"]
        if self._index_file_ok(final, expected):
            return str(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        with self._claimed(f"names-{expected['name']}"):  # one process of the node fetches it
            if not self._index_file_ok(final, expected):
                self._fetch_index_file(name, expected, final)  # verified it
                self._names_checked[str(final)] = self._signature(final, expected["sha256"])
        return str(final)

    def _index_file_ok(self, final: Path, expected: dict) -> bool:
        """The copy is there and matches the index: hashed once, then known by its signature
        (size, mtime, ctime, inode: the sample ledger asks for every sample of every step)."""
        try:
            signature = self._signature(final, expected["sha256"])
        except FileNotFoundError:
            return False
        if self._names_checked.get(str(final)) == signature:
            return True
        if self._file_problem(final, expected) is not None:
            return False
        self._names_checked[str(final)] = signature
        return True

    def _fetch_index_file(self, name: str, expected: dict, final: Path) -> None:
        part = final.with_name(f"{final.name}.tmp-{self.me}")
        try:
            cached = self.root / expected["name"]
            try:
                shutil.copyfile(cached, part)
            except OSError:
                self._get([expected], [part], name)
            problem = self._file_problem(part, expected)
            if problem:
                self._get([expected], [part], name)
                problem = self._file_problem(part, expected)
            if problem:
                raise DatasetError(f"streaming {self.where}: {expected['name']} fails its check "
                                   f"against {INDEX_NAME} ({problem}): the stored copy is "
                                   f"damaged; upload it again from the pack (or pack again)")
            os.replace(part, final)
        finally:
            _remove(part)

    @contextmanager
    def _claimed(self, what: str):
        """flock claims/<what>.lock for the block, waiting for another process holding it."""
        fd = os.open(self.state_dir / "claims" / f"{what}.lock",
                     os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            _unlock(fd)

    # ----------------------------------------------------------------- fetching

    def _fetch(self, name: str, spare: Optional[Callable[[], bool]]) -> bool:
        """Make `name` present and verified. With `spare` (the shard is needed now) this waits
        for room as described above; without it (a background fetch) it returns False when
        there is no room, or when the shard is no longer held."""
        waited_since = None
        while True:
            if spare is None and not self._held(name):
                return False
            if name in self._failed and spare is not None:
                raise self._failed[name]
            with self._node() as state:
                status = self._status(name)
                claim = _flock_try(self._claim_path(name)) if status != "ok" else None
                if status == "ok":
                    self._touch(state, name)
                    return True
                if claim is None:
                    busy = True  # another process (or thread) is downloading or checking it
                else:
                    busy = False
                    if status == "missing":
                        room = self._make_room(state, name, overdraw=self._overdrawn(waited_since))
                        if room:
                            state["procs"][self.me]["inflight"][name] = self.size[name]
                            self._note_peak(state)
                        else:
                            _unlock(claim)
                            claim = None
            if busy:
                self._wait_claim(name)
                continue
            if claim is None:  # no room
                if spare is None:
                    return False
                if spare():
                    continue
                waited_since = waited_since or time.monotonic()
                time.sleep(0.1)
                continue
            try:
                if status == "unverified":  # kept if it passes, else removed: then fetched
                    self._check_cached(name)
                    continue
                self._download(name)
            finally:
                with self._node() as state:
                    state["procs"][self.me]["inflight"].pop(name, None)
                    self._note_peak(state)
                _unlock(claim)

    def _overdrawn(self, waited_since: Optional[float]) -> bool:
        if waited_since is None or time.monotonic() - waited_since < self.overdraw_after_s:
            return False
        return True

    def _held(self, name: str) -> bool:
        with self._mutex:
            return self._holds[name] > 0

    def _wait_claim(self, name: str) -> None:
        """Until the process holding the shard's claim lets go (done, failed or dead)."""
        started = time.monotonic()
        while True:
            fd = _flock_try(self._claim_path(name))
            if fd is not None:
                _unlock(fd)
                self.stats["waited_for_peer_s"] += time.monotonic() - started
                return
            time.sleep(0.02)

    def _download(self, name: str) -> None:
        """Fetch the shard's files into incoming/, check them, give them their final names."""
        entry = self.entries[name]
        problem = None
        for attempt in range(1, DOWNLOADS + 1):
            started = time.monotonic()
            parts = [self.state_dir / "incoming" / f"{self.me}.{f['name']}" for f in entry["files"]]
            try:
                self._get(entry["files"], parts, name)
                problem = next(filter(None, (self._file_problem(part, expected) for part, expected
                                             in zip(parts, entry["files"]))), None)
                if problem is None:
                    signature = {}
                    for part, expected in zip(parts, entry["files"]):
                        final = self.root / expected["name"]
                        os.replace(part, final)
                        signature[expected["name"]] = self._signature(final, expected["sha256"])
                    self._write_verified(name, signature)
                    seconds = time.monotonic() - started
                    self.stats["downloads"] += 1
                    self.stats["bytes"] += self.size[name]
                    log.info("shard %s streamed from %s (%.1f MB in %.2f s)", name, self.where,
                             self.size[name] / MB, seconds)
                    return
            finally:
                for part in parts:
                    _remove(part)
            self.stats["verify_failures"] += 1
            log.warning("shard %s from %s fails its check against %s (%s): download %d of %d",
                        name, self.where, INDEX_NAME, problem, attempt, DOWNLOADS)
        error = DatasetError(f"streaming {self.where}: shard {name} fails its check against "
                             f"{INDEX_NAME} after {DOWNLOADS} downloads ({problem}): the stored copy "
                             f"is damaged; upload that shard again from the pack (or pack again)")
        self._failed[name] = error
        raise error

    def _get(self, files: list, parts: list, name: str) -> None:
        """The shard's files (its data and .db) into `parts`, in parallel: one lean GET each
        below storage.multipart_threshold_mb, parallel ranged GETs above (cloud.storage.store)."""
        errors: list = []
        with self.storage.batch() as batch:
            for expected, part in zip(files, parts):
                batch.download(expected["name"], str(part), size=expected["size"],
                               version=self.versions.get(expected["name"]),
                               on_done=lambda error: errors.append(error) if error else None)
        if errors:
            self.stats["store_errors"] += 1
            exc = errors[0]  # explained by the store (cloud.storage.s3client): one line
            raise DatasetError(
                f"streaming {self.where}: shard {name} could not be downloaded ({exc}); the run "
                f"stops here and keeps its checkpoints: run it again with --resume auto once the "
                f"store answers") from None

    @staticmethod
    def _file_problem(path: Path, expected: dict) -> Optional[str]:
        size = os.path.getsize(path)
        if size != expected["size"]:
            return f"{expected['name']} has {size} bytes, the index says {expected['size']}"
        if sha256_file(path) != expected["sha256"]:
            return f"{expected['name']} has another sha256"
        return None

    def _check_cached(self, name: str) -> bool:
        """A shard found under its final names without a valid record (a file changed since,
        or an earlier run's): hash it; keep it if it passes, else remove it."""
        entry = self.entries[name]
        signature = {}
        for expected in entry["files"]:
            final = self.root / expected["name"]
            problem = self._file_problem(final, expected) if final.is_file() else "missing"
            if problem:
                log.info("shard %s in the cache %s fails its check (%s): fetching it again",
                         name, self.root, problem)
                self._remove_shard(name)
                return False
            signature[expected["name"]] = self._signature(final, expected["sha256"])
        self._write_verified(name, signature)
        return True

    # ----------------------------------------------------------------- background fetches

    def _start_workers(self) -> None:
        while len(self._workers) < self._worker_count:
            thread = threading.Thread(target=self._prefetch, daemon=True,
                                      name=f"shard-prefetch-{len(self._workers)}")
            self._workers.append(thread)
            thread.start()

    def _prefetch(self) -> None:
        while True:
            with self._mutex:
                while not self._queue:
                    self._mutex.wait()
                name = self._queue.popleft()
            try:
                fetched = self._fetch(name, None)
            except DatasetError as exc:  # the reader meets it again (and reports it) if it needs it
                log.warning("background fetch of %s: %s", name, exc)
                continue
            except Exception as exc:  # noqa: BLE001 (never kill the worker; the reader retries)
                log.warning("background fetch of %s failed: %s", name, exc)
                continue
            if not fetched and self._held(name):  # no room yet: first in line when there is
                with self._mutex:
                    if name not in self._queue:
                        self._queue.appendleft(name)
                    self._mutex.wait(0.2)

    # ----------------------------------------------------------------- the node's state

    @contextmanager
    def _node(self):
        """The node lock, with the shared state (written back on a clean exit)."""
        with self._node_mutex:
            fcntl.flock(self._node_fd, fcntl.LOCK_EX)
            try:
                path = self.state_dir / "state.json"
                try:
                    state = json.loads(path.read_text())
                except (OSError, ValueError):
                    state = {}
                state.setdefault("procs", {})
                state.setdefault("used", {})
                state.setdefault("peak_bytes", 0)
                mine = state["procs"].setdefault(self.me, {"pins": [], "inflight": {}})
                mine["pins"] = set(mine["pins"])
                yield state
                mine["pins"] = sorted(mine["pins"])
                tmp = self.state_dir / f"state.json.tmp-{self.me}"
                tmp.write_text(json.dumps(state))
                os.replace(tmp, path)
            finally:
                fcntl.flock(self._node_fd, fcntl.LOCK_UN)

    def _pins(self, state) -> set:
        return state["procs"][self.me]["pins"]

    def _live(self, state) -> dict:
        """Live processes' entries; dead ones (their life lock is free) are dropped."""
        for proc in list(state["procs"]):
            if proc == self.me:
                continue
            fd = _flock_try(self.state_dir / "procs" / f"{proc}.lock")
            if fd is not None:  # nobody holds it: that process is gone
                _unlock(fd)
                _remove(self.state_dir / "procs" / f"{proc}.lock")
                del state["procs"][proc]
        return state["procs"]

    def _clean(self, state) -> None:
        """On opening: drop dead processes, their partial downloads, and shard files that are
        not in this index (an earlier pack at the same URL)."""
        live = self._live(state)
        for entry in os.scandir(self.state_dir / "incoming"):
            if entry.name.split(".", 1)[0] not in live:
                _remove(Path(entry.path))
        for entry in os.scandir(self.root):
            if entry.is_file() and ".mindrecord" in entry.name and entry.name not in self.owner:
                _remove(Path(entry.path))
        for entry in os.scandir(self.state_dir / "procs"):
            if entry.name.endswith(".lock") and entry.name[:-5] not in live:
                fd = _flock_try(Path(entry.path))
                if fd is not None:
                    _unlock(fd)
                    _remove(Path(entry.path))

    def _on_disk(self) -> dict:
        """{shard: bytes on disk} of the index's shard files in the cache folder."""
        found: Counter = Counter()
        for entry in os.scandir(self.root):
            owner = self.owner.get(entry.name)
            if owner is not None:
                try:
                    found[owner] += entry.stat().st_size
                except FileNotFoundError:
                    pass
        return found

    def _used(self, state, on_disk: dict) -> int:
        """Shards on disk plus downloads reserved (a download being renamed into place counts
        once: the larger of the two)."""
        reserved: dict = {}
        for proc in state["procs"].values():
            for name, size in proc["inflight"].items():
                reserved[name] = max(reserved.get(name, 0), size)
        return (sum(size for name, size in on_disk.items() if name not in reserved)
                + sum(max(size, on_disk.get(name, 0)) for name, size in reserved.items()))

    def _note_peak(self, state) -> None:
        used = self._used(state, self._on_disk())
        state["peak_bytes"] = max(int(state.get("peak_bytes", 0)), used)
        self.stats["peak_bytes"] = max(self.stats["peak_bytes"], used)

    def _make_room(self, state, name: str, overdraw: bool) -> bool:
        """Evict shards no live process holds (least recently used first) until `name` fits;
        False when it cannot. With `overdraw` it is let in anyway (with a warning)."""
        live = self._live(state)
        held = set().union(*(set(proc["pins"]) for proc in live.values()))
        on_disk = self._on_disk()
        need = self.size[name]
        if self._used(state, on_disk) + need <= self.limit:
            return True
        candidates = sorted((s for s in on_disk if s not in held and s != name),
                            key=lambda s: state["used"].get(s, 0.0))
        for victim in candidates:
            claim = _flock_try(self._claim_path(victim))
            if claim is None:
                continue  # being checked by someone: not now
            try:
                self._remove_shard(victim)
            finally:
                _unlock(claim)
            state["used"].pop(victim, None)
            self.stats["evictions"] += 1
            on_disk.pop(victim, None)
            if self._used(state, on_disk) + need <= self.limit:
                return True
        if overdraw:
            if not self._warned_overdraw:
                self._warned_overdraw = True
                log.warning("streaming cache %s: the shards this node's processes hold (%.1f MB) "
                            "leave no room for %s (%.1f MB) within data.cache_limit_gb (%.2f GB): "
                            "going over it; raise data.cache_limit_gb (or lower "
                            "data.prefetch_shards)", self.root, sum(on_disk.values()) / MB, name,
                            need / MB, self.limit / GB)
            self.stats["overdraws"] += 1
            return True
        self.stats["no_room"] += 1
        return False

    def _touch(self, state, name: str) -> None:
        state["used"][name] = time.time()

    # ----------------------------------------------------------------- files

    def _claim_path(self, name: str) -> Path:
        return self.state_dir / "claims" / f"{name}.lock"

    def _verified_path(self, name: str) -> Path:
        return self.state_dir / "verified" / f"{name}.json"

    @staticmethod
    def _signature(path: Path, sha256: str) -> list:
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, sha256]

    def _write_verified(self, name: str, signature: dict) -> None:
        path = self._verified_path(name)
        tmp = path.with_name(path.name + f".tmp-{self.me}")
        tmp.write_text(json.dumps(signature))
        os.replace(tmp, path)

    def _status(self, name: str) -> str:
        """ok (files there, unchanged since verified against this index), unverified (files
        there, no valid record), or missing."""
        files = self.entries[name]["files"]
        present = [(self.root / f["name"]).is_file() for f in files]
        if not all(present):
            return "missing"
        try:
            record = json.loads(self._verified_path(name).read_text())
        except (OSError, ValueError):
            return "unverified"
        for expected in files:
            try:
                now = self._signature(self.root / expected["name"], expected["sha256"])
            except FileNotFoundError:
                return "missing"
            if record.get(expected["name"]) != now:
                return "unverified"
        return "ok"

    def _remove_shard(self, name: str) -> None:
        _remove(self._verified_path(name))
        for expected in self.entries[name]["files"]:
            _remove(self.root / expected["name"])

    def node_stats(self) -> dict:
        """The node's state as the cache sees it now (for logs, tests and benchmarks)."""
        with self._node() as state:
            on_disk = self._on_disk()
            return {"bytes_on_disk": sum(on_disk.values()), "shards_on_disk": len(on_disk),
                    "peak_bytes": int(state["peak_bytes"]), "limit_bytes": self.limit,
                    "processes": len(self._live(state))}


# --------------------------------------------------------------------------- opening a pack


def open_streamed_pack(url: str, root: str | os.PathLike, settings, data_cfg) -> StreamedDataset:
    """The streamed dataset of the pack at `url` (core.data.streamed), its cache in `root`: the
    pack's index.json fetched and checked, the cache limit checked against the shards and the
    disk."""
    storage = open_storage(url, settings)
    storage.check()
    if not storage.exists(INDEX_NAME):
        raise DatasetError(f"data.stream=true reads a packed dataset, but {url} has no "
                           f"{INDEX_NAME}: pack it first (launcher/local.py pack --src ... --dst "
                           f"{url}) or set data.stream=false to stage it")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{INDEX_NAME}.tmp-{os.getpid()}"
    storage.download_file(INDEX_NAME, str(tmp))
    os.replace(tmp, root / INDEX_NAME)
    index = read_index(root)  # format and consistency, one DatasetError line
    limit = int(data_cfg.cache_limit_gb * GB)
    sizes = [sum(f["size"] for f in entry["files"]) for split in index["splits"].values()
             for entry in split["shards"]]
    largest, total = max(sizes), sum(sizes)
    if limit < 2 * largest:
        raise ConfigError(f"data.cache_limit_gb={data_cfg.cache_limit_gb:g} holds fewer than 2 of "
                          f"{url}'s shards (the largest is {largest / MB:.1f} MB): raise it to at "
                          f"least {2 * largest / GB:.3g}")
    cached = sum(p.stat().st_size for p in root.iterdir() if p.is_file() and ".mindrecord" in p.name)
    free = shutil.disk_usage(root).free + cached
    if min(limit, total) > free:
        raise ConfigError(f"data.cache_limit_gb={data_cfg.cache_limit_gb:g} but {root} has "
                          f"{free / GB:.1f} GB free (with its cached shards): lower "
                          f"data.cache_limit_gb or put the cache on a larger disk (--cache_dir or "
                          f"MNV3_CACHE_DIR)")
    versions = {info.key: info.version for info in storage.list()}
    cache = ShardCache(storage, root, index, limit, versions=versions)
    log.info("streaming %s: %d shards (%.2f GB), node cache %s limited to %.2f GB, %d shard(s) "
             "prefetched per process", url, len(sizes), total / GB, root, limit / GB,
             data_cfg.prefetch_shards)
    return StreamedDataset(root, cache, data_cfg.prefetch_shards, where=url,
                           ranged_bytes=int(data_cfg.ranged_reads_mb * MB))
