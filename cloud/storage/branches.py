"""Which checkpoints of an output URL a resume continues: the store's side of the branch rule,
and a run killed before its first upload.

Continuing from step S (an explicit, older checkpoint) moves the store's checkpoints after S
under `<prefix>/superseded-<S>-<UTC time>/` and rewrites the manifest to list only those up to
S, as core.checkpoint.CheckpointManager.supersede_after does in the run directory: keep-K and
`--resume auto` then see only the live branch, and nothing is deleted. Order: copy, manifest,
delete, so a reader never sees a manifest naming a missing object.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

from cloud.storage.checkpoint_store import MANIFEST_NAME, ENTRY_FIELDS, read_manifest
from cloud.storage.errors import StorageError
from cloud.storage.store import S3Storage, Storage
from cloud.storage.urls import check_relative_key

log = logging.getLogger("cloud.storage.branches")


def _copy(storage: Storage, src: str, dst: str, scratch: str) -> None:
    if isinstance(storage, S3Storage):  # server-side, no bytes through this host (up to 5 GB)
        storage.copy(src, dst)
        return
    local = os.path.join(scratch, os.path.basename(src))
    storage.download_file(src, local)
    storage.upload_file(local, dst)
    os.remove(local)


def supersede_remote(storage: Storage, prefix: str, step: int, lease=None) -> Optional[str]:
    """Move the manifest's checkpoints after `step` aside; the folder's key, or None."""
    manifest = read_manifest(storage, prefix)
    entries = (manifest or {}).get("checkpoints") or []
    later = [e for e in entries if isinstance(e.get("step"), int) and e["step"] > step]
    if not later:
        return None
    if lease is not None:
        lease.confirm()
    aside = f"{prefix}/superseded-{step}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    with tempfile.TemporaryDirectory() as scratch:
        for e in later:
            name = check_relative_key(str(e["key"]))
            _copy(storage, f"{prefix}/{name}", f"{aside}/{name}", scratch)
    storage.write_bytes(f"{aside}/{MANIFEST_NAME}", json.dumps(manifest, indent=1).encode())
    kept = [e for e in entries if e not in later]
    manifest_key = f"{prefix}/{MANIFEST_NAME}"
    if lease is not None:
        lease.confirm()
    if kept:
        newest = kept[0]
        storage.write_bytes(manifest_key, json.dumps(
            dict(manifest, **{f: newest.get(f) for f in ENTRY_FIELDS}, checkpoints=kept),
            indent=1).encode())
    else:
        storage.delete(manifest_key)
    for e in later:
        storage.delete(f"{prefix}/{e['key']}")
    log.warning("continuing from step %d: moved %d later checkpoint(s) on the store (up to step %s) "
                "to %s", step, len(later), later[0]["step"], storage.describe(aside))
    return aside


def resume_from_cache(run_dir: Path, ckpt_prefix: str, keep: int, uploader, where: str) -> Optional[str]:
    """No manifest on the store, but the cached run directory holds checkpoints (killed before
    the first upload): the newest that loads, after queueing the loadable ones for upload."""
    from core.checkpoint import CheckpointManager, load
    manager = CheckpointManager(run_dir / "checkpoints", ckpt_prefix, keep)
    if not manager.files():
        return None
    good = manager.newest_loadable()[-keep:]
    if not good:
        raise StorageError(f"no checkpoint manifest at {where}, and none of the checkpoints in "
                           f"{manager.folder} loads: move them away to start afresh")
    log.warning("no checkpoint manifest at %s, but this node's run directory %s holds %d verified "
                "checkpoint(s): resuming from %s%s", where, run_dir, len(good), good[-1].name,
                " and publishing them" if uploader is not None else
                " (this process does not upload: the next checkpoint starts the manifest)")
    if uploader is not None:
        for path in good:
            uploader.submit_checkpoint(str(path), load(path).meta)
    return str(good[-1])
