"""One small interface over local directories and S3/OBS buckets.

Launchers call :func:`open_storage` with whatever the user gave (a local path,
``s3://bucket/prefix`` or ``obs://bucket/prefix``) and treat the result alike.
Keys are always relative to the URL's prefix and use ``/``.

Single-object calls (``upload_file``, ``download_file``, ``read_bytes``...)
suit manifests and checkpoints. Many-object work goes through
:meth:`Storage.batch`, a context that runs transfers in parallel (for S3: one
lean signed request per object below the multipart threshold, see
:mod:`cloud.storage.s3lean`, and boto3's transfer manager in parts above it) and waits
for them on exit; :mod:`cloud.storage.sync` builds trees on it.

Downloads are atomic: data goes to ``<final>.cloud-part-<pid>`` in the same
directory and is renamed when complete, so a crash never leaves a half file
under the final name (:func:`remove_stale_parts` clears what a dead process
left behind).
"""

from __future__ import annotations

import logging
import os
import threading
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Mapping, NamedTuple

from cloud.storage.errors import PreconditionFailed, StorageError
from cloud.storage.settings import StorageSettings, to_settings
from cloud.storage.urls import StorageURL, check_relative_key, parse_url, safe_local_path
from core.ownership import pid_alive

log = logging.getLogger("cloud.storage.store")

PART_MARK = ".cloud-part-"
INTERNAL_PREFIX = ".cloud-"  # state, lock and marker files of this package

BytesCallback = Callable[[int], None]
DoneCallback = Callable[[BaseException | None], None]


class ObjectInfo(NamedTuple):
    """One listed object: ``version`` is the ETag for S3, the mtime in ns locally."""

    key: str
    size: int
    version: str
    mtime: float


def part_path(final_path: str) -> str:
    """The temporary name a download uses until it is complete."""
    return f"{final_path}{PART_MARK}{os.getpid()}"


def remove_stale_parts(root: str) -> int:
    """Delete partial downloads under ``root`` left by dead processes (or by us)."""
    removed = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            mark = name.rfind(PART_MARK)
            if mark < 0:
                continue
            pid_text = name[mark + len(PART_MARK):].split(".")[0]
            if pid_text.isdigit() and int(pid_text) != os.getpid() and pid_alive(int(pid_text)):
                continue
            try:
                os.remove(os.path.join(dirpath, name))
                removed += 1
            except FileNotFoundError:
                pass
    if removed:
        log.info("removed %d partial download(s) left under %s", removed, root)
    return removed


class TransferBatch(ABC):
    """Parallel transfers that all finish (or are cancelled) on ``__exit__``.

    ``on_done(error_or_None)`` runs in a worker thread when each transfer
    ends; ``on_bytes(n)`` as data moves. Submitting never raises for a
    transfer failure: failures arrive through ``on_done``.
    """

    @abstractmethod
    def download(self, key: str, local_path: str, *, size: int | None = None,
                 version: str | None = None, on_bytes: BytesCallback | None = None,
                 on_done: DoneCallback | None = None) -> None:
        """Fetch ``key`` atomically into ``local_path``; ``size`` and ``version`` (if known
        from a listing) let objects skip the multipart machinery."""

    @abstractmethod
    def upload(self, local_path: str, key: str, *, on_bytes: BytesCallback | None = None,
               on_done: DoneCallback | None = None) -> None: ...

    @abstractmethod
    def close(self, cancel: bool = False) -> None: ...

    def __enter__(self) -> "TransferBatch":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(cancel=exc_type is not None)


class Storage(ABC):
    """A place holding objects under relative keys."""

    url: StorageURL
    settings: StorageSettings

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under the directory ``prefix`` ("" for all), any order."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """The object's info, None when it does not exist."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def read_range(self, key: str, start: int, length: int, version: str | None = None) -> bytes:
        """Bytes [start, start + length) of ``key`` (one ranged GET on S3); with ``version``
        (an ETag from a listing) only while the object is still that version. Callers check
        the length they got: a range past the end is cut short by OBS ("the length of the
        object minus 1 is used", support.huaweicloud.com/en-us/sdk-python-devg-obs/
        obs_22_1479.html), and other stores answer such a range with the whole object."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete ``key``; a missing key is not an error."""

    @abstractmethod
    def batch(self, workers: int | None = None) -> TransferBatch: ...

    def check(self) -> None:
        """Fail early, with a clear StorageError, if the location is unusable."""

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def describe(self, key: str = "") -> str:
        """The URL of ``key`` for messages."""
        return str(self.url.child(key)) if key else str(self.url)

    def upload_file(self, local_path: str, key: str, on_bytes: BytesCallback | None = None) -> None:
        self._one(lambda b, done: b.upload(local_path, key, on_bytes=on_bytes, on_done=done))

    def download_file(self, key: str, local_path: str, on_bytes: BytesCallback | None = None) -> None:
        """Download atomically: ``local_path`` appears only when complete."""
        os.makedirs(os.path.dirname(os.path.abspath(local_path)), exist_ok=True)
        self._one(lambda b, done: b.download(key, local_path, on_bytes=on_bytes, on_done=done))

    def _one(self, submit: Callable[[TransferBatch, DoneCallback], None]) -> None:
        errors: list[BaseException] = []
        with self.batch() as batch:
            submit(batch, lambda err: errors.append(err) if err else None)
        if errors:
            raise errors[0]

    def copy(self, src: str, dst: str) -> None:
        """Copy an object within this storage (through a local temporary file here; S3 copies
        server-side)."""
        import tempfile
        with tempfile.TemporaryDirectory() as scratch:
            local = os.path.join(scratch, "object")
            self.download_file(src, local)
            self.upload_file(local, dst)

    def local_file(self, key: str) -> str | None:
        """None: a checkpoint store (core.checkpoint_store) downloads objects of a storage into
        its cache, a local directory's too, so a resume reads a verified copy."""
        return None

    def close(self) -> None:
        """Release connections; the object stays usable (it reconnects)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url})"


def _dir_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


# --------------------------------------------------------------------------- local


def walk_files(top: str, root: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """(key relative to `root` with "/", path, stat) of every file below `top`, in sorted
    order, skipping this package's internal files and partial downloads (and files that
    vanish while walking)."""
    for dirpath, dirs, files in os.walk(top):
        dirs.sort()
        for name in sorted(files):
            if name.startswith(INTERNAL_PREFIX) or PART_MARK in name:
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            yield os.path.relpath(path, root).replace(os.sep, "/"), path, st


class LocalStorage(Storage):
    """A directory; keys are paths below it."""

    def __init__(self, url: StorageURL, settings: StorageSettings):
        self.url = url
        self.settings = settings
        self.root = url.path
        self._real_root: str | None = None

    def path(self, key: str) -> str:
        """The file for ``key``; refuses keys that would leave the root."""
        if self._real_root is None:
            self._real_root = os.path.realpath(self.root)
        return safe_local_path(self.root, key, self._real_root)

    def check(self) -> None:
        if not os.path.isdir(self.root):
            raise StorageError(f"local storage directory {self.root} does not exist")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        top = os.path.join(self.root, *_dir_prefix(prefix).split("/"))
        for key, _, st in walk_files(top, self.root):
            yield ObjectInfo(key, st.st_size, str(st.st_mtime_ns), st.st_mtime)

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = os.stat(self.path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return ObjectInfo(key, st.st_size, str(st.st_mtime_ns), st.st_mtime)

    def read_bytes(self, key: str) -> bytes:
        try:
            with open(self.path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise StorageError(f"object {self.describe(key)} does not exist") from None

    def read_range(self, key: str, start: int, length: int, version: str | None = None) -> bytes:
        try:
            with open(self.path(key), "rb") as f:
                return os.pread(f.fileno(), length, start)
        except FileNotFoundError:
            raise StorageError(f"object {self.describe(key)} does not exist") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        final = self.path(key)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = part_path(final)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, final)

    def delete(self, key: str) -> None:
        try:
            os.remove(self.path(key))
        except FileNotFoundError:
            pass

    def batch(self, workers: int | None = None) -> TransferBatch:
        return _LocalBatch(self, workers or self.settings.workers)


def _copy_atomic(src: str, final: str, on_bytes: BytesCallback | None) -> None:
    tmp = part_path(final)
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while True:
                block = fin.read(1 << 20)
                if not block:
                    break
                fout.write(block)
                if on_bytes:
                    on_bytes(len(block))
        os.replace(tmp, final)
    except BaseException:
        _remove_quietly(tmp)
        raise


class _LocalBatch(TransferBatch):
    def __init__(self, storage: LocalStorage, workers: int):
        self._storage = storage
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cloud-local")

    def _run(self, fn: Callable[[], None], on_done: DoneCallback | None) -> None:
        def task() -> None:
            try:
                fn()
            except BaseException as exc:  # reported, not raised: see TransferBatch
                if on_done:
                    on_done(exc)
                return
            if on_done:
                on_done(None)
        self._pool.submit(task)

    def download(self, key, local_path, *, size=None, version=None, on_bytes=None, on_done=None):
        src = self._storage.path(key)

        def copy() -> None:
            if not os.path.exists(src):
                raise StorageError(f"object {self._storage.describe(key)} does not exist")
            _copy_atomic(src, local_path, on_bytes)
        self._run(copy, on_done)

    def upload(self, local_path, key, *, on_bytes=None, on_done=None):
        final = self._storage.path(key)

        def copy() -> None:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            _copy_atomic(local_path, final, on_bytes)
        self._run(copy, on_done)

    def close(self, cancel: bool = False) -> None:
        self._pool.shutdown(wait=True, cancel_futures=cancel)


# --------------------------------------------------------------------------- S3


class S3Storage(Storage):
    """A bucket prefix on S3 or OBS, through boto3."""

    def __init__(self, url: StorageURL, settings: StorageSettings):
        from cloud.storage import s3client  # boto3 is imported only when S3 is used
        self.url = url
        self.settings = settings
        self.bucket = url.bucket
        self._s3client = s3client
        self._conn = s3client.connect(url, settings)

    @property
    def client(self) -> Any:
        return self._conn.client

    @property
    def connection(self):
        return self._conn

    def _key(self, key: str) -> str:
        check_relative_key(key)
        return self.url.key(key)

    def _explained(self, key: str = ""):
        return self._s3client.explained(self._conn, self.bucket, self.url.key(key) if key else "")

    def _explain(self, exc: BaseException, key: str = "") -> BaseException:
        return self._s3client.explain_if_known(exc, self._conn, self.bucket,
                                               self.url.key(key) if key else "")

    def check(self) -> None:
        # A one-key listing, not HeadBucket: HEAD errors have no body, so a bad
        # secret and a missing permission would both read as a bare 403.
        with self._explained():
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=_dir_prefix(self.url.prefix),
                                        MaxKeys=1)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        root = _dir_prefix(self.url.prefix)
        full_prefix = root + _dir_prefix(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        with self._explained(prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                for obj in page.get("Contents", ()):
                    key = obj["Key"]
                    if key.endswith("/"):
                        continue  # a "directory marker", not a file
                    yield ObjectInfo(key[len(root):], int(obj["Size"]),
                                     str(obj.get("ETag", "")).strip('"'),
                                     obj["LastModified"].timestamp())

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            with self._explained(key):
                head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except StorageError as exc:
            if s3_error_code(exc) in _MISSING:
                return None
            raise
        return ObjectInfo(key, int(head["ContentLength"]), str(head.get("ETag", "")).strip('"'),
                          head["LastModified"].timestamp())

    def read_bytes(self, key: str) -> bytes:
        with self._explained(key):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def read_range(self, key: str, start: int, length: int, version: str | None = None) -> bytes:
        extra = {"IfMatch": version} if version else {}
        with self._explained(key):
            got = self.client.get_object(Bucket=self.bucket, Key=self._key(key),
                                         Range=f"bytes={start}-{start + length - 1}", **extra)
            return got["Body"].read()

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._explained(key):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def delete(self, key: str) -> None:
        with self._explained(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        """(bytes, ETag) of a small object, (None, None) when there is none: the version a
        conditional write may then replace."""
        try:
            with self._explained(key):
                got = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
                return got["Body"].read(), got.get("ETag")
        except StorageError as exc:
            if s3_error_code(exc) in _MISSING:
                return None, None
            raise

    def write_if(self, key: str, data: bytes, *, if_match: str | None = None) -> None:
        """Create `key` only if it does not exist (if_match None: `If-None-Match: *`), or replace
        only the version `if_match`; PreconditionFailed when the store holds another. Stores
        that ignore the headers write unconditionally (see cloud.storage.lease's probe)."""
        condition = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}
        try:
            with self._explained(key):
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                       **condition)
        except StorageError as exc:
            if s3_error_code(exc) in _CONFLICT:
                raise PreconditionFailed(f"{self.describe(key)} changed under a conditional "
                                         f"write") from None
            raise

    def open_body(self, key: str, start: int = 0, if_match: str | None = None):
        """The object's body as botocore's stream, from byte `start`; with `if_match`, only
        while the object is still that version (a resumed read must not mix two uploads)."""
        extra = {"Range": f"bytes={start}-"} if start else {}
        if if_match:
            extra["IfMatch"] = if_match
        with self._explained(key):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key), **extra)["Body"]

    def copy(self, src: str, dst: str) -> None:
        """Server-side copy within the bucket (objects up to 5 GB): no bytes through this host."""
        with self._explained(src):
            self.client.copy_object(CopySource={"Bucket": self.bucket, "Key": self._key(src)},
                                    Bucket=self.bucket, Key=self._key(dst))

    def transfer_config(self, workers: int | None = None):
        from boto3.s3.transfer import TransferConfig
        s = self.settings
        return TransferConfig(
            multipart_threshold=s.multipart_threshold,
            multipart_chunksize=s.multipart_chunksize,
            max_concurrency=workers or s.workers,
            io_chunksize=s.io_chunksize_kb * 1024,
            use_threads=True,
            preferred_transfer_client="classic",
            # each attempt is already bounded by stall_timeout_s (botocore attempts); a second
            # covers a body cut mid-stream, more would multiply a stalled store's wait
            num_download_attempts=2,
        )

    def batch(self, workers: int | None = None) -> TransferBatch:
        return _S3Batch(self, workers or self.settings.workers)

    def close(self) -> None:
        self.client.close()


class _S3Batch(TransferBatch):
    """Transfers through boto3's transfer manager (multipart above threshold).

    Objects known to be below the multipart threshold skip the manager: one
    GetObject (PutObject) by a pool thread is what the manager would do, minus
    four thread hand-offs per file. With ``storage.engine`` auto that request
    is a lean one (cloud.storage.s3lean: a fraction of botocore's client CPU per
    object, which on 2 cores is most of staging many small files), and an
    object above the threshold whose size and ETag the listing gave is fetched
    as lean ranged GETs by the same pool into one preallocated part file
    (:class:`_RangedDownload`). Any answer but the expected one sends the
    object down the boto3 path; a stream that breaks mid-body is handed to the
    manager, which retries such errors.
    """

    def __init__(self, storage: S3Storage, workers: int):
        from boto3.s3.transfer import create_transfer_manager
        from cloud.storage.s3lean import lean_for
        self._storage = storage
        self._config = storage.transfer_config(workers)
        self._manager = create_transfer_manager(storage.client, self._config)
        self._small = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cloud-get")
        self._lean = lean_for(storage)

    def _subscribers(self, key: str, on_bytes, on_done, finish: Callable[[], None] | None = None,
                     cleanup: Callable[[], None] | None = None):
        from s3transfer.subscribers import BaseSubscriber
        storage = self._storage

        class Subscriber(BaseSubscriber):
            def on_progress(self, future, bytes_transferred, **kwargs):
                if on_bytes:
                    on_bytes(bytes_transferred)

            def on_done(self, future, **kwargs):
                error: BaseException | None = None
                try:
                    future.result()
                    if finish:
                        finish()
                except BaseException as exc:
                    if cleanup:
                        cleanup()
                    error = storage._explain(exc, key)
                if on_done:
                    on_done(error)
        return [Subscriber()]

    def _lean_on(self) -> bool:
        return self._lean is not None and self._lean.enabled

    def download(self, key, local_path, *, size=None, version=None, on_bytes=None, on_done=None):
        if size is not None and size < self._config.multipart_threshold:
            self._small.submit(self._get_small, key, local_path, size, on_bytes, on_done)
        elif size is not None and version and self._lean_on():
            _RangedDownload(self, key, local_path, size, version, on_bytes, on_done).start()
        else:
            self._managed_download(key, local_path, on_bytes, on_done)

    def _managed_download(self, key, local_path, on_bytes, on_done):
        tmp = part_path(local_path)

        def finish() -> None:
            os.replace(tmp, local_path)

        def cleanup() -> None:
            _remove_quietly(tmp)
        self._manager.download(self._storage.bucket, self._storage._key(key), tmp,
                               subscribers=self._subscribers(key, on_bytes, on_done, finish, cleanup))

    def _fetch(self, full_key: str, fd: int, size: int) -> int:
        """The object's bytes into ``fd``: a lean GET, else botocore's GetObject. Returns the
        bytes written."""
        lean = self._lean
        if lean is not None and lean.enabled and lean.get_to_fd(full_key, fd):
            return size
        storage = self._storage
        body = storage.client.get_object(Bucket=storage.bucket, Key=full_key)["Body"]
        written = 0
        # Read in pieces no bigger than the object: each read allocates (and the kernel
        # zeroes) a buffer of the requested size.
        for piece in body.iter_chunks(max(1, min(size, self._config.io_chunksize))):
            os.write(fd, piece)
            written += len(piece)
        return written

    def _get_small(self, key, local_path, size, on_bytes, on_done):
        """One object below the threshold into its part file, renamed when complete. Progress
        is reported once, at the end: these are seconds-long at most."""
        from cloud.storage.s3client import STREAMING_ERRORS
        from cloud.storage.s3lean import LeanStreamBroken
        storage = self._storage
        tmp = part_path(local_path)
        try:
            fd = os.open(tmp, _CREATE_FLAGS, 0o666)
            try:
                written = self._fetch(storage._key(key), fd, size)
            finally:
                os.close(fd)
            os.replace(tmp, local_path)
        except (*STREAMING_ERRORS, LeanStreamBroken) as exc:
            _remove_quietly(tmp)
            if _is_timeout(exc):  # the store went silent: botocore's attempts spent the stall
                if on_done:       # budget already (storage.stall_timeout_s); no third round
                    on_done(storage._explain(exc, key))
                return
            log.info("stream of %s broke (%s); retrying through the transfer manager",
                     storage.describe(key), type(exc).__name__)
            self._managed_download(key, local_path, on_bytes, on_done)
            return
        except BaseException as exc:
            _remove_quietly(tmp)
            if on_done:
                on_done(storage._explain(exc, key))
            return
        if on_bytes and written:
            on_bytes(written)
        if on_done:
            on_done(None)

    def upload(self, local_path, key, *, on_bytes=None, on_done=None):
        full_key = self._storage._key(key)
        lean = self._lean
        if lean is not None and lean.enabled:
            try:
                small = os.path.getsize(local_path) < self._config.multipart_threshold
            except OSError:
                small = False  # the manager reports it
            if small:
                self._small.submit(self._put_small, local_path, key, full_key, on_bytes, on_done)
                return
        self._managed_upload(local_path, key, full_key, on_bytes, on_done)

    def _managed_upload(self, local_path, key, full_key, on_bytes, on_done):
        self._manager.upload(local_path, self._storage.bucket, full_key,
                             subscribers=self._subscribers(key, on_bytes, on_done))

    def _put_small(self, local_path, key, full_key, on_bytes, on_done):
        try:
            with open(local_path, "rb") as f:
                data = f.read()
            lean = self._lean
            if not (lean.enabled and lean.put_bytes(full_key, data)):
                self._managed_upload(local_path, key, full_key, on_bytes, on_done)
                return
        except BaseException as exc:
            if on_done:
                on_done(self._storage._explain(exc, key))
            return
        if on_bytes:
            on_bytes(len(data))
        if on_done:
            on_done(None)

    def close(self, cancel: bool = False) -> None:
        # Small transfers first: a broken stream or a refused lean request may still hand
        # work to the manager.
        self._small.shutdown(wait=True, cancel_futures=cancel)
        self._manager.shutdown(cancel=cancel)
        if self._lean is not None:
            self._lean.close()


_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)


class _RangedDownload:
    """One large object as parallel lean ranged GETs (parts of ``multipart_chunksize``) into
    one part file of the listed size, written with ``os.pwrite`` and renamed when every part
    is in. Size and ETag come from the listing, so there is no HEAD; each part's answer must
    carry that ETag and length. If any part is refused or its stream breaks, the whole object
    is handed to the transfer manager once the others have stopped."""

    def __init__(self, batch: _S3Batch, key: str, local_path: str, size: int, etag: str,
                 on_bytes, on_done):
        self.batch, self.key, self.local_path, self.size, self.etag = batch, key, local_path, size, etag
        self.on_bytes, self.on_done = on_bytes, on_done
        self.tmp = part_path(local_path)
        self.lock = threading.Lock()
        self.written = 0
        self.failure: BaseException | None = None
        self.fall_back = False
        self.fd = -1
        self.left = 0

    def start(self) -> None:
        try:
            self.fd = os.open(self.tmp, _CREATE_FLAGS, 0o666)
            os.ftruncate(self.fd, self.size)
        except OSError as exc:
            if self.fd >= 0:
                os.close(self.fd)
            _remove_quietly(self.tmp)
            if self.on_done:
                self.on_done(exc)
            return
        chunk = max(1, self.batch._config.multipart_chunksize)
        parts = [(start, min(chunk, self.size - start)) for start in range(0, self.size, chunk)]
        self.left = len(parts)
        for start, length in parts:
            self.batch._small.submit(self._part, start, length)

    def _count(self, n: int) -> None:
        with self.lock:
            self.written += n
        if self.on_bytes:
            self.on_bytes(n)

    def _part(self, start: int, length: int) -> None:
        from cloud.storage.s3lean import LeanStreamBroken
        try:
            if not (self.failure or self.fall_back):
                lean = self.batch._lean
                if not (lean.enabled and lean.get_to_fd(
                        self.batch._storage._key(self.key), self.fd, self._count,
                        start=start, length=length, etag=self.etag)):
                    self.fall_back = True
        except LeanStreamBroken:
            self.fall_back = True
        except BaseException as exc:
            self.failure = exc
        with self.lock:
            self.left -= 1
            last = self.left == 0
        if last:
            self._finish()

    def _finish(self) -> None:
        os.close(self.fd)
        if self.failure is None and not self.fall_back:
            try:
                os.replace(self.tmp, self.local_path)
            except OSError as exc:
                self.failure = exc
            else:
                if self.on_done:
                    self.on_done(None)
                return
        _remove_quietly(self.tmp)
        if self.on_bytes and self.written:
            self.on_bytes(-self.written)
        if self.failure is not None:
            if self.on_done:
                self.on_done(self.batch._storage._explain(self.failure, self.key))
            return
        log.info("lean ranged GETs of %s did not all succeed; fetching it through the transfer "
                 "manager", self.batch._storage.describe(self.key))
        self.batch._managed_download(self.key, self.local_path, self.on_bytes, self.on_done)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------- factory


def open_storage(url: str | os.PathLike | StorageURL,
                 settings: StorageSettings | Mapping[str, Any] | None = None) -> Storage:
    """A Storage for a local path, ``s3://bucket/prefix`` or ``obs://bucket/prefix``.

    No request is made; call ``check()`` to fail early on a bad bucket or key.
    """
    parsed = url if isinstance(url, StorageURL) else parse_url(url)
    settings = to_settings(settings)
    if parsed.is_remote:
        return S3Storage(parsed, settings)
    return LocalStorage(parsed, settings)


_MISSING = ("404", "NoSuchKey", "NotFound")
_CONFLICT = ("412", "PreconditionFailed", "409", "ConditionalRequestConflict")


def _is_timeout(exc: BaseException) -> bool:
    from botocore.exceptions import ReadTimeoutError
    return isinstance(exc, (ReadTimeoutError, TimeoutError))


def s3_error_code(exc: StorageError) -> str | None:
    """The S3 error code behind an explained StorageError ("" when the store answered without
    one); None when no answer came (connection, timeout)."""
    from botocore.exceptions import ClientError
    cause = exc.__cause__
    if isinstance(cause, ClientError):
        return cause.response.get("Error", {}).get("Code") or ""
    return None
