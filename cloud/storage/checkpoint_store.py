"""Checkpoints on object storage: the background uploader that mirrors the run directory's
checkpoint store into the output URL's, and fetching a checkpoint URL for a resume.

Both stores are core.checkpoint_store.CheckpointStore (same manifest, same keep-K, same
branch rule); here they are backed by cloud.storage.store.Storage. Layout under the output::

    <output>/checkpoints/...     the store (core.checkpoint_store's layout)
    <output>/.lease.json         the writing run's lease (cloud.storage.lease), confirmed
                                 before every object and manifest write
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from cloud.storage.errors import StorageError
from cloud.storage.lease import LeaseError
from cloud.storage.store import Storage, open_storage
from cloud.storage.urls import StorageURL, check_relative_key, parse_url
from core.checkpoint import CheckpointError
from core.checkpoint_store import MANIFEST_NAME, CheckpointStore

log = logging.getLogger("cloud.storage.checkpoint_store")

__all__ = ["MANIFEST_NAME", "CheckpointUploader", "UploadReport", "fetch_checkpoint", "newest_checkpoint"]


# --------------------------------------------------------------------------- upload


DIGEST = ("size", "sha256")  # a checkpoint's manifest fields its saver already computed


@dataclass
class UploadReport:
    """What :meth:`CheckpointUploader.wait` found: ``ok`` when nothing failed or is pending."""

    uploaded: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    pending: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and self.pending == 0


_STOP = object()


class CheckpointUploader:
    """Mirror the run directory's checkpoints into the output's checkpoint store
    (core.checkpoint_store: the object, then the manifest, then keep-K) in a background thread.

    ``submit`` returns at once: training never waits for the network. Uploads
    run one at a time in submission order (each multipart-parallel itself), so
    the manifest always moves forward. A failed upload (after botocore's own
    retries) is logged and tried again ``retries`` times, ``retry_delay_s``,
    3x and 9x that later, unless a newer checkpoint is submitted meanwhile
    (the newer one is what a resume needs; the older one is then dropped).
    What still failed is collected for :meth:`wait`; nothing raises in the
    caller. Local files are never deleted.

    With a ``lease`` (cloud.storage.lease), ownership is confirmed before each object
    and each manifest write: a writer that lost the output URL to another run
    writes nothing more there (reported as failed, not retried).
    """

    def __init__(self, storage: Storage, prefix: str = "", keep: int = 5, *,
                 retries: int = 3, retry_delay_s: float = 10.0,
                 lease: Any = None):
        self.store = CheckpointStore(storage, prefix, keep, owner=lease)
        self.retries = max(0, int(retries))
        self.retry_delay_s = float(retry_delay_s)
        self.storage = storage
        self.prefix = prefix.strip("/")
        self._queue: queue.Queue = queue.Queue()
        self._report = UploadReport()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name="checkpoint-uploader", daemon=True)
        self._thread.start()

    def submit_checkpoint(self, local_path: str, meta: Mapping[str, Any]) -> None:
        """Queue a checkpoint with what its manifest entry records of the checkpoint's own
        metadata (epoch, step, kind), and its size and sha256 when the saver has them (the
        run directory's store hashed the file already: core.train.checkpoint_saver)."""
        self.submit(local_path, {name: meta[name] for name in ("epoch", "step", "kind", *DIGEST)
                                 if name in meta})

    def submit(self, local_path: str, meta: Mapping[str, Any] | None = None) -> None:
        """Queue ``local_path`` for upload; ``meta`` should hold ``epoch`` and ``step``."""
        meta = dict(meta or {})
        pinned = self._pin(local_path)
        with self._lock:
            self._pending += 1
        self._queue.put((local_path, pinned, meta))

    def wait(self, timeout: float | None = None) -> UploadReport:
        """Block until every submitted upload ended (or ``timeout`` s passed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._idle.wait(remaining)
            return UploadReport(list(self._report.uploaded), list(self._report.failed), self._pending)

    def close(self, timeout: float | None = None) -> UploadReport:
        """Wait for pending uploads, then stop the thread."""
        report = self.wait(timeout)
        self._queue.put(_STOP)
        self._thread.join(timeout=1.0 if report.pending else None)
        return report

    def __enter__(self) -> "CheckpointUploader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- background thread

    @staticmethod
    def _pin(local_path: str) -> str | None:
        """Hard-link the file so the upload reads what was submitted even if the
        trainer deletes or rewrites it meanwhile (keep-K, "last.ckpt")."""
        directory, name = os.path.split(local_path)
        pinned = os.path.join(directory, f".cloud-upload-{os.getpid()}-{time.monotonic_ns()}-{name}")
        try:
            os.link(local_path, pinned)
            return pinned
        except OSError:
            return None

    def _retry_delay(self, failures: int) -> float:
        """Seconds before the next try of an upload that failed `failures` times."""
        return self.retry_delay_s * 3 ** (failures - 1)

    def _run(self) -> None:
        retry = None  # (item, failed attempts, last error) of the newest upload that failed
        while True:
            try:
                timeout = None if retry is None else self._retry_delay(retry[1])
                item = self._queue.get(timeout=timeout)
            except queue.Empty:  # nothing newer came: try the failed one again
                failed_item, failures, _ = retry
                retry = self._attempt(failed_item, failures)
                continue
            if retry is not None:
                self._finish(retry[0], "superseded" if item is not _STOP else retry[2])
                retry = None
            if item is _STOP:
                return
            retry = self._attempt(item, 0)

    def _attempt(self, item, failures: int):
        """Upload `item`; on failure return (item, failures, message) while retries remain."""
        local_path, pinned, meta = item
        try:
            key = self._upload(pinned or local_path, os.path.basename(local_path), meta)
        except BaseException as exc:  # never kill the thread: report instead
            failures += 1 if not isinstance(exc, LeaseError) else self.retries + 1
            message = (f"checkpoint upload of {local_path} to {self.storage.describe(self.prefix)} "
                       f"failed: {exc}")
            if failures <= self.retries:
                log.error("%s; retrying in %.0f s unless a newer checkpoint comes first", message,
                          self._retry_delay(failures))
                return item, failures, message
            log.error(message)
            self._finish(item, message)
            return None
        with self._lock:
            self._report.uploaded.append(key)
        self._finish(item, None)
        return None

    def _finish(self, item, failure) -> None:
        """`item` is done: uploaded (None), dropped for a newer one ("superseded") or failed."""
        local_path, pinned, _ = item
        if failure == "superseded":
            log.info("dropping the failed upload of %s: a newer checkpoint was submitted", local_path)
        elif failure:
            with self._lock:
                self._report.failed.append(failure)
        if pinned:
            try:
                os.remove(pinned)
            except OSError:
                pass
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()

    def _upload(self, path: str, name: str, meta: dict) -> str:
        check_relative_key(name)
        started = time.monotonic()
        digest = {k: meta[k] for k in DIGEST} if all(k in meta for k in DIGEST) else None
        entry = self.store.add(path, {k: v for k, v in meta.items() if k not in DIGEST}, name=name,
                               entry=digest)
        log.info("uploaded checkpoint %s (%.1f MB, step %s) in %.1f s; manifest updated",
                 self.store.describe(name), entry["size"] / 1e6, entry["step"],
                 time.monotonic() - started)
        return self.store.key(name)


# --------------------------------------------------------------------------- resume


def newest_checkpoint(storage: Storage, prefix: str, cache_dir: str) -> Optional[str]:
    """The local copy of the newest good checkpoint under `prefix` (size and sha256 checked
    against the manifest), None when there is none; StorageError when none is good."""
    try:
        found = CheckpointStore(storage, prefix).newest_good(cache_dir)
    except CheckpointError as exc:
        raise StorageError(str(exc)) from None
    if found is None:
        log.info("no checkpoint at %s: starting fresh", storage.describe(prefix))
        return None
    path, entry = found
    log.info("resuming from %s (epoch %s, step %s)", path, entry.get("epoch"), entry.get("step"))
    return path


def fetch_checkpoint(url: str, cache_dir: str, settings: Any = None) -> str:
    """A local path for an explicit checkpoint URL (`--resume URL`): a local path as it is (if
    it exists); a remote object downloaded into `cache_dir`, its size and sha256 checked when
    the manifest beside it lists it."""
    parsed = parse_url(url)
    if not parsed.is_remote:
        if not os.path.isfile(parsed.path):
            raise StorageError(f"checkpoint {parsed.path} does not exist")
        return parsed.path
    parent, _, name = parsed.prefix.rpartition("/")
    if not name:
        raise StorageError(f"checkpoint URL {url} names a bucket, not an object")
    store = CheckpointStore(open_storage(StorageURL(parsed.scheme, parsed.bucket, parent), settings))
    try:
        listed = [e for e in store.entries() if e.get("key") == name]
    except CheckpointError:  # an unreadable manifest beside it: the object alone
        listed = []
    if not listed and not store.objects.exists(name):
        raise StorageError(f"checkpoint {url} does not exist")
    try:
        return store.fetch(listed[0] if listed else {"key": name}, cache_dir)
    except CheckpointError as exc:
        raise StorageError(str(exc)) from None
