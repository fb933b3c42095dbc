"""Continuing from an older checkpoint moves the later branch aside (locally and on the store),
keep-K never deletes the checkpoint just written, and a remote run killed before its first
upload resumes from its verified local checkpoints and publishes them."""
from __future__ import annotations

import logging
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from cloud.storage.checkpoint_store import CheckpointUploader
from core.checkpoint_store import CheckpointStore, Folder
from cloud.storage.errors import StorageError
from cloud.job import cache_path, prepare_job
from cloud.storage.store import open_storage
from core import checkpoint as ckpt
from core.train.callbacks import Callback
from core.train.checkpoint_saver import CheckpointSaver
from core.train.metrics import MetricsWriter
from launcher.cli import resolve_local_resume
from launcher.runner import claim_run_dir
from tests.core_fixtures import tiny_config


def fake_checkpoints(folder: Path, steps, prefix="mobilenetv3") -> list[Path]:
    """Small real .ckpt files (CRC-checked on load), one per step."""
    params = [ms.Parameter(ms.Tensor(np.arange(4, dtype=np.float32)), name="w")]
    return [ckpt.save(folder / ckpt.checkpoint_name(prefix, 1, s), params, {"epoch": 1, "step": s})
            for s in steps]


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def test_keep_k_never_deletes_the_checkpoint_just_written(tmp_path):
    cfg = tiny_config("unused", tmp_path, **{"checkpoint.keep": 2})
    folder = tmp_path / "checkpoints"
    fake_checkpoints(folder, [400, 500], cfg.checkpoint.prefix)  # a newer branch still present
    params = [ms.Parameter(ms.Tensor(np.zeros(2, np.float32)), name="w")]
    saver = CheckpointSaver(folder, cfg.checkpoint, lambda: params, {}, True,
                            MetricsWriter(tmp_path / "metrics.jsonl"), Callback())
    written = saver.save(1, 300, "step")
    assert written.exists()


def test_resuming_an_older_checkpoint_moves_the_later_ones_aside(tmp_path, caplog):
    cfg = tiny_config("unused", tmp_path / "run")
    folder = tmp_path / "run" / "checkpoints"
    paths = fake_checkpoints(folder, [100, 200, 300, 400], cfg.checkpoint.prefix)
    with caplog.at_level(logging.INFO):
        claim_run_dir(cfg, str(paths[1]), "job-1").release()
    (aside,) = [p for p in folder.iterdir() if p.is_dir()]
    assert aside.name.startswith("superseded-200-")
    # each branch keeps its manifest beside its checkpoints (core.checkpoint_store)
    assert names(aside) == ["latest.json", paths[2].name, paths[3].name]
    assert names(folder) == ["latest.json"] + [p.name for p in paths[:2]]
    live = CheckpointStore(Folder(folder)).manifest()
    assert [e["step"] for e in live["checkpoints"]] == [200, 100] and live["step"] == 200
    assert str(aside) in caplog.text
    assert resolve_local_resume(cfg, "auto") == str(paths[1])  # auto sees only the live branch


def test_resuming_an_older_checkpoint_on_s3_moves_the_later_ones_aside(s3_server, tmp_path):
    url = f"s3://{s3_server.make_bucket()}/runs/r1"
    storage = open_storage(url, s3_server.settings())
    paths = fake_checkpoints(tmp_path / "made", [100, 200, 300])
    with CheckpointUploader(storage, "checkpoints", keep=5) as uploader:
        for path, step in zip(paths, (100, 200, 300)):
            uploader.submit(str(path), {"epoch": 1, "step": step})
    cfg = tiny_config("unused", url)
    job = prepare_job(cfg, resume=f"{url}/checkpoints/{paths[0].name}", cache_dir=tmp_path / "cache",
                      job_id="j2", settings=s3_server.settings())
    try:
        manifest = CheckpointStore(storage, "checkpoints").manifest()
        assert manifest["step"] == 100 and [e["step"] for e in manifest["checkpoints"]] == [100]
        keys = sorted(o.key for o in storage.list("checkpoints"))
        moved = [k.rsplit("/", 1)[1] for k in keys if "/superseded-100-" in k]
        assert sorted(moved) == ["latest.json", paths[1].name, paths[2].name]  # old manifest too
        assert f"checkpoints/{paths[1].name}" not in keys
    finally:
        job.uploader.close(10)
        job.lease.release()


def test_remote_run_killed_before_its_first_upload_resumes_from_its_cache(s3_server, tmp_path, caplog):
    url = f"s3://{s3_server.make_bucket()}/runs/r7"
    storage = open_storage(url, s3_server.settings())
    cfg = tiny_config("unused", url)
    run_dir = cache_path(tmp_path / "cache", "output", url)
    paths = fake_checkpoints(run_dir / "checkpoints", [2, 4, 6], cfg.checkpoint.prefix)
    paths[-1].write_bytes(paths[-1].read_bytes()[:-20])  # the newest was cut short by the kill
    with caplog.at_level(logging.INFO):
        job = prepare_job(cfg, resume="auto", cache_dir=tmp_path / "cache", job_id="j3",
                          settings=s3_server.settings())
    try:
        assert job.resume == str(paths[1])
        assert resolve_local_resume(job.cfg, job.resume) == str(paths[1])
        assert job.uploader.wait(30).ok
        manifest = CheckpointStore(storage, "checkpoints").manifest()
        assert manifest["step"] == 4 and [e["step"] for e in manifest["checkpoints"]] == [4, 2]
        assert "no checkpoint at" in caplog.text and "publishing" in caplog.text
    finally:
        job.uploader.close(10)
        job.lease.release()


def test_a_cache_whose_checkpoints_are_all_damaged_is_one_error_and_frees_the_url(s3_server, tmp_path):
    url = f"s3://{s3_server.make_bucket()}/runs/r8"
    cfg = tiny_config("unused", url)
    run_dir = cache_path(tmp_path / "cache", "output", url)
    (path,) = fake_checkpoints(run_dir / "checkpoints", [2], cfg.checkpoint.prefix)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(StorageError, match="none of the checkpoints .* loads: move them away"):
        prepare_job(cfg, resume="auto", cache_dir=tmp_path / "cache", job_id="j4",
                    settings=s3_server.settings())
    assert open_storage(url, s3_server.settings()).stat(".lease.json") is None  # lease released
