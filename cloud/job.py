"""A training job's local view of remote data and outputs, and the path back.

`prepare_job` turns a config whose `data.path`, `system.output_dir` or resume point are
`s3://` / `obs://` URLs into one with local paths (staging the data into a cache, once per
node), and returns the callbacks that upload checkpoints in the background. `finish` waits for
those uploads and publishes the final outputs. Local paths pass through untouched, so every
launcher can call this unconditionally.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from cloud.storage.checkpoint_store import CheckpointUploader, fetch_checkpoint, newest_checkpoint
from cloud.storage.errors import StorageError
from cloud.storage.lease import Lease
from cloud.storage.node_lock import run_once_per_node
from cloud.storage.settings import to_settings
from cloud.storage.shard_cache import open_streamed_pack
from cloud.storage.store import open_storage
from cloud.storage.sync import download_tree, upload_tree
from cloud.storage.urls import is_remote_url, parse_url
from core.checkpoint import CheckpointError, load, step_of_checkpoint
from core.checkpoint_store import CheckpointStore, run_checkpoints
from core.train.callbacks import Callback
from core.data.sources import open_dataset, provide_source

log = logging.getLogger("cloud.job")
CHECKPOINT_PREFIX = "checkpoints"


def cache_path(cache_dir: Path, kind: str, url: str) -> Path:
    """A stable local folder per remote URL: readable name plus a short hash of the URL."""
    parsed = parse_url(url)
    tail = (parsed.prefix.strip("/").replace("/", "_") or "root")[-60:]
    digest = hashlib.sha256(str(url).encode()).hexdigest()[:10]
    return Path(cache_dir) / kind / f"{parsed.bucket}_{tail}_{digest}"


class CheckpointUpload(Callback):
    """Hands each finished checkpoint to the background uploader; training never waits."""

    def __init__(self, uploader: CheckpointUploader):
        self.uploader = uploader

    def on_checkpoint(self, path, meta):
        self.uploader.submit_checkpoint(str(path), meta)


@dataclass
class PreparedJob:
    cfg: Any                                # core Config with local paths only
    resume: Optional[str]                   # local checkpoint path, "auto" (local run), or None
    pretrained: Optional[str] = None        # local path of fine-tuning weights
    callbacks: list = field(default_factory=list)
    output_url: Optional[str] = None        # where finish() publishes the run directory
    settings: Any = None
    uploader: Optional[CheckpointUploader] = None
    lease: Optional[Lease] = None           # the writer's ownership of output_url (cloud.storage.lease)

    def finish(self, timeout_s: Optional[float] = None) -> None:
        """Wait for checkpoint uploads, mirror the run directory to the output URL, release
        the lease."""
        if not self.output_url:
            return
        try:
            self._publish(timeout_s)
        finally:
            self.release()

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()

    def _publish(self, timeout_s: Optional[float]) -> None:
        if self.uploader:
            report = self.uploader.wait(timeout_s)
            if report.failed or report.pending:
                log.error("some checkpoint uploads failed%s; local copies are kept in %s",
                          f" or did not finish within {timeout_s} s" if report.pending else "",
                          self.cfg.system.output_dir)
        try:
            if self.lease is not None:  # a writer stopped past its lease (SIGSTOP, a hung node)
                self.lease.confirm()    # and taken over meanwhile publishes nothing over the new owner
            stats = upload_tree(self.cfg.system.output_dir, open_storage(self.output_url, self.settings), "")
        except StorageError as exc:
            raise StorageError(f"the run ended but its outputs could not be published to "
                               f"{self.output_url}: {exc}; everything, checkpoints included, is kept "
                               f"in {self.cfg.system.output_dir}") from exc
        log.info("outputs published to %s (%s)", self.output_url, stats)


def prepare_job(cfg, *, resume: Optional[str], cache_dir: str | os.PathLike, job_id: str,
                writer: bool = True, settings: Any = None,
                pretrained: Optional[str] = None, output_url: Optional[str] = None) -> PreparedJob:
    """Stage remote data, map a remote output URL to a local run directory, resolve resume.

    `job_id` makes the per-node staging lock belong to this job; `writer` is true on the rank
    that writes shared outputs (rank 0): only it uploads checkpoints.
    """
    cfg = copy.deepcopy(cfg)
    cache_dir = Path(cache_dir)
    job = PreparedJob(cfg=cfg, resume=None, settings=settings)

    if is_remote_url(cfg.data.path) and cfg.data.stream:
        # read while training: shards come into a bounded node cache as the ranks need them
        # (cloud.storage.shard_cache); data.path stays the URL, whose source this process knows
        provide_source(cfg.data.path, open_streamed_pack(
            cfg.data.path, cache_path(cache_dir, "stream", cfg.data.path), settings, cfg.data))
    elif is_remote_url(cfg.data.path):
        storage = open_storage(cfg.data.path, settings)
        storage.check()
        local = cache_path(cache_dir, "data", cfg.data.path)
        stats = download_tree(storage, "", str(local), job_id=job_id)
        log.info("dataset %s staged in %s (%s)", cfg.data.path, local, stats)
        dataset = open_dataset(local)  # e.g. every packed shard against its index, once per node
        run_once_per_node(str(local), job_id, lambda: dataset.verify(reuse=True),
                          name="verify", source=cfg.data.path)
        cfg.data.path = str(local)

    output_storage = None
    if is_remote_url(cfg.system.output_dir):
        job.output_url = cfg.system.output_dir
        output_storage = open_storage(job.output_url, settings)
        output_storage.check()
        cfg.system.output_dir = str(cache_path(cache_dir, "output", job.output_url))
        if writer:  # owns the output URL before writing anything there
            job.lease = Lease(output_storage, job_id).acquire().start_renewing()
            retry = to_settings(settings)
            job.uploader = CheckpointUploader(output_storage, CHECKPOINT_PREFIX, keep=cfg.checkpoint.keep,
                                              retries=retry.upload_retries,
                                              retry_delay_s=retry.upload_retry_delay_s, lease=job.lease)
            job.callbacks.append(CheckpointUpload(job.uploader))
    try:
        _resolve(job, cfg, output_storage, resume, pretrained, cache_dir, job_id, settings)
        if job.resume == "auto" and output_url and is_remote_url(output_url):
            job.resume = resume_from_output_url(cfg, output_url, cache_dir / "resume" / job_id,
                                                settings)
    except BaseException:
        if job.uploader:
            job.uploader.close(timeout=5)
        job.release()
        raise
    return job


def resume_from_output_url(cfg, output_url: str, cache_dir: Path, settings) -> str:
    """`--resume auto` with a local output folder that the platform mirrors to `output_url`
    (ModelArts' train_url: its output is uploaded, but not necessarily downloaded again before a
    restart). The local folder's checkpoints win; when it has none, the checkpoint store at
    `output_url` is read directly (with the node's credentials, e.g. storage.metadata_url's
    agency): its newest good checkpoint. Returns "auto" when neither holds any. A store
    that holds checkpoints but cannot be read is a StorageError: never a silent start at step 0."""
    if run_checkpoints(cfg.system.output_dir, cfg.checkpoint).latest() is not None:
        return "auto"
    try:
        found = newest_checkpoint(open_storage(output_url, settings), CHECKPOINT_PREFIX, str(cache_dir))
    except StorageError as exc:
        raise StorageError(f"cannot read the checkpoints of {output_url} to resume this "
                           f"(re)started job: {exc}; refusing to start again from step 0 (fix "
                           f"the store's access, e.g. storage.metadata_url, or pass --resume none "
                           f"to start over on purpose)") from exc
    if found is None:
        log.info("no checkpoints in %s or at %s: starting fresh", cfg.system.output_dir, output_url)
        return "auto"
    log.info("the local output folder holds no checkpoint: resuming from %s's %s", output_url, found)
    return found


def _resolve(job: PreparedJob, cfg, output_storage, resume, pretrained, cache_dir: Path, job_id,
             settings) -> None:
    """The resume point (and pre-trained weights) as local paths; the store's side of the
    branch rule (cloud.storage.branches) for an explicit older checkpoint."""
    resume_cache = cache_dir / "resume" / job_id
    if pretrained:
        job.pretrained = (fetch_checkpoint(pretrained, str(cache_dir / "pretrained"), settings)
                          if is_remote_url(pretrained) else pretrained)
    if resume == "auto":
        if output_storage is not None:
            job.resume = newest_checkpoint(output_storage, CHECKPOINT_PREFIX, str(resume_cache))
            if job.resume is None:  # killed before its first upload: this node's cache has them
                job.resume = resume_from_cache(cfg, job.uploader, job.output_url)
        else:
            job.resume = "auto"  # the local launcher resolves it in the run directory
    elif is_remote_url(resume):
        job.resume = fetch_checkpoint(resume, str(resume_cache), settings)
    elif resume:
        if not Path(resume).is_file():
            raise StorageError(f"checkpoint {resume} does not exist (pass a .ckpt file, a URL, "
                               f"or 'auto')")
        job.resume = resume
    elif output_storage is not None and _remote_store(output_storage).latest() is not None:
        raise StorageError(f"{job.output_url} already holds checkpoints; pass --resume auto to "
                           f"continue that run or choose another output URL")
    if resume and resume != "auto" and output_storage is not None and job.uploader is not None:
        _remote_store(output_storage, job.lease).supersede(step_of_checkpoint(job.resume))


def _remote_store(output_storage, lease=None) -> CheckpointStore:
    return CheckpointStore(output_storage, CHECKPOINT_PREFIX, owner=lease)


def resume_from_cache(cfg, uploader, where: str) -> Optional[str]:
    """No checkpoint on the store, but this node's cached run directory holds some (killed
    before the first upload): the newest that loads, after queueing every loadable one for
    upload (oldest first, so the store's manifest ends at the newest)."""
    store = run_checkpoints(cfg.system.output_dir, cfg.checkpoint)
    entries = store.entries()
    good = []
    for entry in reversed(entries):
        path = store.fetch(entry, "")  # a local folder: the file itself
        try:
            good.append((path, load(path).meta))
        except CheckpointError as exc:  # e.g. cut short by the kill
            log.warning("skipping %s", exc)
    if not entries:
        return None
    if not good:
        raise StorageError(f"no checkpoint at {where}, and none of the checkpoints in "
                           f"{store.describe()} loads: move them away to start afresh")
    log.warning("no checkpoint at %s, but this node's run directory %s holds %d verified "
                "checkpoint(s): resuming from %s%s", where, cfg.system.output_dir, len(good),
                Path(good[-1][0]).name, " and publishing them" if uploader is not None else
                " (this process does not upload: the next checkpoint starts the manifest)")
    if uploader is not None:
        for path, meta in good:
            uploader.submit_checkpoint(path, meta)
    return good[-1][0]
