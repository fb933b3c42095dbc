"""Checkpoints on object storage: background upload, manifest, verified resume.

Layout under the output prefix::

    <prefix>/<checkpoint file name>     one object per uploaded checkpoint
    <prefix>/latest.json                the manifest, always written last
    <prefix>/superseded-<S>-<time>/     checkpoints after step S, moved aside when a run
                                        continued from S (cloud.storage.branches)
    <output>/.lease.json                the writing run's lease (cloud.storage.lease), confirmed
                                        before every object and manifest write

The manifest (format 1)::

    {"format": 1, "key": "mbv3-3_100.ckpt", "epoch": 3, "step": 300,
     "size": 123, "sha256": "...", "time": "2026-11-27T20:39:41Z", "meta": {...},
     "checkpoints": [ {same fields for each kept checkpoint}, ... ]}   newest first

``key`` is relative to the manifest's prefix, so a prefix can be copied or
moved. The manifest is replaced only after its checkpoint object is
complete, and older objects are deleted only after the manifest stopped
listing them, so a reader never sees a manifest pointing at a missing or
partial object.

Everything here takes file paths and dicts: nothing knows about MindSpore.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from cloud.storage.errors import StorageError
from cloud.storage.lease import LeaseError
from cloud.storage.store import Storage, open_storage
from cloud.storage.urls import StorageURL, check_relative_key, parse_url

log = logging.getLogger("cloud.storage.checkpoint_store")

MANIFEST_NAME = "latest.json"
MANIFEST_FORMAT = 1
ENTRY_FIELDS = ("key", "epoch", "step", "size", "sha256", "time")


def sha256_file(path: str, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _join(prefix: str, name: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{name}" if prefix else name


def read_manifest(storage: Storage, prefix: str = "", name: str = MANIFEST_NAME) -> dict | None:
    """The manifest under ``prefix``, None if there is none; StorageError if unreadable."""
    key = _join(prefix, name)
    if not storage.exists(key):
        return None
    raw = storage.read_bytes(key)
    try:
        manifest = json.loads(raw)
        if not isinstance(manifest, dict) or "key" not in manifest:
            raise ValueError("no 'key' field")
    except ValueError as exc:
        raise StorageError(f"checkpoint manifest {storage.describe(key)} is not valid ({exc}): "
                           f"fix or delete it, or resume from an explicit checkpoint URL") from None
    return manifest


# --------------------------------------------------------------------------- upload


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
    """Upload checkpoints in a background thread and publish a manifest after each.

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
                 manifest_name: str = MANIFEST_NAME, retries: int = 3, retry_delay_s: float = 10.0,
                 lease: Any = None):
        if keep < 1:
            raise ValueError("keep must be at least 1 (the manifest needs its checkpoint)")
        self.retries = max(0, int(retries))
        self.retry_delay_s = float(retry_delay_s)
        self.storage = storage
        self.prefix = prefix.strip("/")
        self.keep = keep
        self.manifest_name = manifest_name
        self.lease = lease
        self._queue: queue.Queue = queue.Queue()
        self._report = UploadReport()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._manifest: dict | None = None
        self._manifest_loaded = False
        self._thread = threading.Thread(target=self._run, name="checkpoint-uploader", daemon=True)
        self._thread.start()

    def submit_checkpoint(self, local_path: str, meta: Mapping[str, Any]) -> None:
        """Queue a checkpoint with what its manifest entry records of the checkpoint's own
        metadata (epoch, step, kind)."""
        self.submit(local_path, {name: meta.get(name) for name in ("epoch", "step", "kind")})

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

    def _confirm_owner(self) -> None:
        if self.lease is not None:
            self.lease.confirm()

    def _load_manifest(self) -> dict | None:
        if not self._manifest_loaded:
            try:
                self._manifest = read_manifest(self.storage, self.prefix, self.manifest_name)
            except StorageError as exc:
                log.warning("%s; starting a new manifest", exc)
                self._manifest = None
            self._manifest_loaded = True
        return self._manifest

    def _upload(self, path: str, name: str, meta: dict) -> str:
        check_relative_key(name)
        started = time.monotonic()
        size = os.path.getsize(path)
        digest = sha256_file(path)
        self._confirm_owner()
        self.storage.upload_file(path, _join(self.prefix, name))
        entry = {"key": name, "epoch": meta.get("epoch"), "step": meta.get("step"), "size": size,
                 "sha256": digest, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        previous = self._load_manifest()
        older = [e for e in (previous or {}).get("checkpoints", []) if e.get("key") != name]
        kept = [entry] + older[: self.keep - 1]
        dropped = older[self.keep - 1:]
        manifest = {"format": MANIFEST_FORMAT, **entry,
                    "meta": {k: v for k, v in meta.items() if k not in ENTRY_FIELDS},
                    "checkpoints": kept}
        self._confirm_owner()
        self.storage.write_bytes(_join(self.prefix, self.manifest_name),
                                 json.dumps(manifest, indent=1, default=str).encode())
        self._manifest = manifest
        for old in dropped:
            try:
                check_relative_key(old["key"])
                self.storage.delete(_join(self.prefix, old["key"]))
            except (StorageError, KeyError, TypeError) as exc:
                log.warning("could not delete old checkpoint %s: %s", old, exc)
        log.info("uploaded checkpoint %s (%.1f MB, step %s) in %.1f s; manifest updated, %d kept",
                 self.storage.describe(_join(self.prefix, name)), size / 1e6, entry["step"],
                 time.monotonic() - started, len(kept))
        return _join(self.prefix, name)


# --------------------------------------------------------------------------- resume


def _verified(path: str, entry: Mapping[str, Any]) -> str | None:
    """None if ``path`` matches the entry's size and sha256, else why not."""
    size = os.path.getsize(path)
    if entry.get("size") is not None and size != int(entry["size"]):
        return f"size {size} != manifest size {entry['size']}"
    if entry.get("sha256"):
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            return f"sha256 {digest[:12]}... != manifest {str(entry['sha256'])[:12]}..."
    return None


def _fetch_verified(storage: Storage, key: str, entry: Mapping[str, Any], cache_dir: str) -> str:
    """Download ``key`` into ``cache_dir`` (reusing a verified copy); raise if it is bad."""
    local = os.path.join(cache_dir, os.path.basename(key))
    if os.path.exists(local) and _verified(local, entry) is None:
        log.info("using cached checkpoint %s (verified)", local)
        return local
    storage.download_file(key, local)
    problem = _verified(local, entry)
    if problem:
        os.remove(local)
        raise StorageError(f"checkpoint {storage.describe(key)} is corrupt: {problem}")
    return local


def resolve_resume(storage: Storage, prefix: str, cache_dir: str, *,
                   manifest_name: str = MANIFEST_NAME) -> str | None:
    """The local path of the newest good checkpoint under ``prefix``, or None.

    None when there is no manifest (start fresh). Otherwise the manifest's
    checkpoints are tried newest first: each is downloaded into ``cache_dir``
    and its size and sha256 checked; a missing or corrupt one is skipped with
    a warning naming it. StorageError if none is good.
    """
    manifest = read_manifest(storage, prefix, manifest_name)
    if manifest is None:
        log.info("no checkpoint manifest at %s: starting fresh",
                 storage.describe(_join(prefix, manifest_name)))
        return None
    os.makedirs(cache_dir, exist_ok=True)
    candidates = manifest.get("checkpoints") or [{f: manifest.get(f) for f in ENTRY_FIELDS}]
    problems = []
    for entry in candidates:
        try:
            name = check_relative_key(str(entry["key"]))
            path = _fetch_verified(storage, _join(prefix, name), entry, cache_dir)
        except (StorageError, KeyError, TypeError, OSError) as exc:
            problems.append(str(exc))
            log.warning("skipping checkpoint: %s; trying the previous one", exc)
            continue
        if entry is not candidates[0]:
            log.warning("resuming from an older checkpoint %s (step %s): the newer ones are bad",
                        storage.describe(_join(prefix, name)), entry.get("step"))
        log.info("resuming from %s (epoch %s, step %s)", path, entry.get("epoch"), entry.get("step"))
        return path
    raise StorageError(f"no usable checkpoint in {storage.describe(_join(prefix, manifest_name))}: "
                       + "; ".join(problems))


def fetch_checkpoint(url: str, cache_dir: str, settings: Any = None) -> str:
    """A local path for an explicit checkpoint URL (``--resume URL``).

    A local path is returned as is (if it exists). A remote object is
    downloaded into ``cache_dir``; when a manifest beside it lists it, its size
    and sha256 are verified too.
    """
    parsed = parse_url(url)
    if not parsed.is_remote:
        if not os.path.isfile(parsed.path):
            raise StorageError(f"checkpoint {parsed.path} does not exist")
        return parsed.path
    parent, _, name = parsed.prefix.rpartition("/")
    if not name:
        raise StorageError(f"checkpoint URL {url} names a bucket, not an object")
    storage = open_storage(StorageURL(parsed.scheme, parsed.bucket, parent), settings)
    entry: Mapping[str, Any] = {}
    try:
        manifest = read_manifest(storage, "")
    except StorageError:
        manifest = None
    for listed in (manifest or {}).get("checkpoints", []):
        if listed.get("key") == name:
            entry = listed
    if not storage.exists(name):
        raise StorageError(f"checkpoint {url} does not exist")
    os.makedirs(cache_dir, exist_ok=True)
    return _fetch_verified(storage, name, entry, cache_dir)
