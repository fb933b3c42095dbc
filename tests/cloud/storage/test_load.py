"""Load: staging 20,000 small objects from the local SeaweedFS with 16 workers, every byte
verified; 4 processes staging the same prefix on one node download it once.

Slow (minutes), so marked `load` and deselected by default (pytest.ini). Run:

    .venv/bin/python -m pytest -m load -s tests/cloud/storage/test_load.py

The figures (upload, staging, files/s, MB/s, GET requests) are printed.
"""
from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import pytest

from cloud.storage.store import PART_MARK, open_storage
from cloud.storage.sync import STATE_NAME, download_tree, upload_tree
from tests.fault_tools import run_spawned

pytestmark = pytest.mark.load
COUNT, WORKERS = 20_000, 16


@pytest.fixture(scope="module")
def bucket_of_small_objects(s3_server, tmp_path_factory):
    """20,000 objects of 0.5-6 KB in 100 folders; returns (url, settings, {rel: sha256})."""
    src = tmp_path_factory.mktemp("load-src")
    rng = np.random.default_rng(20_000)
    digests = {}
    for i in range(COUNT):
        rel = f"train/c{i % 100:03d}/{i:05d}.jpg"
        data = rng.bytes(int(rng.integers(500, 6000)))
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        digests[rel] = hashlib.sha256(data).hexdigest()
    settings = s3_server.settings(workers=WORKERS)
    url = f"s3://{s3_server.make_bucket()}/ds"
    started = time.monotonic()
    stats = upload_tree(str(src), open_storage(url, settings), "")
    print(f"\nupload: {stats.files_transferred} objects, {stats.bytes_transferred / 1e6:.1f} MB "
          f"in {time.monotonic() - started:.1f} s")
    assert stats.files_transferred == COUNT
    return url, settings, digests


def verify(cache, digests) -> None:
    found = {}
    for dirpath, _dirs, names in os.walk(cache):
        for name in names:
            if name.startswith(".cloud-"):
                continue
            path = os.path.join(dirpath, name)
            assert PART_MARK not in name, path
            with open(path, "rb") as f:
                found[os.path.relpath(path, cache)] = hashlib.sha256(f.read()).hexdigest()
    assert found == digests  # every object, every byte, nothing else


def counting_storage(url, settings):
    storage = open_storage(url, settings)
    gets = [0]

    def count(**_):
        gets[0] += 1
    storage.client.meta.events.register("before-send.s3.GetObject", count)
    return storage, gets


def test_staging_20000_small_objects_with_16_workers_verifies_every_byte(bucket_of_small_objects, tmp_path):
    url, settings, digests = bucket_of_small_objects
    storage, gets = counting_storage(url, settings)
    cache = tmp_path / "cache"
    started = time.monotonic()
    stats = download_tree(storage, "", str(cache), workers=WORKERS)
    seconds = time.monotonic() - started
    print(f"\nstage {COUNT} objects, {WORKERS} workers: {seconds:.1f} s, {COUNT / seconds:.0f} files/s, "
          f"{stats.bytes_transferred / 1e6 / seconds:.1f} MB/s, {gets[0]} GETs")
    assert (stats.files_transferred, stats.files_skipped, stats.failed) == (COUNT, 0, [])
    assert gets[0] == COUNT
    started = time.monotonic()
    verify(cache, digests)
    print(f"verified {COUNT} files by sha256 in {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    again = download_tree(storage, "", str(cache), workers=WORKERS)
    print(f"incremental re-stage: {again.files_transferred} transferred, {again.files_skipped} "
          f"skipped in {time.monotonic() - started:.1f} s")
    assert (again.files_transferred, again.files_skipped) == (0, COUNT) and gets[0] == COUNT
    assert os.path.exists(cache / STATE_NAME)


def _stager(url, settings, cache, results):
    storage, gets = counting_storage(url, settings)
    started = time.monotonic()
    stats = download_tree(storage, "", cache, workers=WORKERS, job_id="load-job", lock_timeout_s=1800)
    results.put((os.getpid(), stats.files_transferred, stats.staged_by_peer, gets[0],
                 time.monotonic() - started))


def test_four_processes_staging_the_same_prefix_download_it_once(bucket_of_small_objects, tmp_path):
    url, settings, digests = bucket_of_small_objects
    cache = str(tmp_path / "cache")
    started = time.monotonic()
    out = run_spawned(_stager, (url, settings, cache), 4, timeout_s=1800)
    print(f"\n4 processes, same prefix: {time.monotonic() - started:.1f} s; per process "
          f"(files, by peer, GETs, s): {[(n, peer, g, round(s, 1)) for _pid, n, peer, g, s in out]}")
    assert sorted(n for _pid, n, *_ in out) == [0, 0, 0, COUNT]
    assert sum(peer for _pid, _n, peer, *_ in out) == 3
    assert sum(g for *_, g, _s in out) == COUNT  # one GET per object on the whole node
    verify(cache, digests)
